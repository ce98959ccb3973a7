//! The FIX layer's OpenTelemetry instruments: observed at collection time from the latest
//! published [`FixState`] (a collection only reads numbers), except the order latency histogram,
//! which the FIX thread records as round trips complete (see `monitor`).
//!
//! Attributes are bounded: `target` (configured names), `session` (`SENDER->TARGET`, only
//! sessions seen on watched connections or in configured logs, capped by the tracker's
//! `max_sessions`), `direction`, `initiator`, `kind`, `request` (fixed sets) and `msg_type`
//! (standard names, capped per session by the tracker's `max_msg_types`).

use opentelemetry::metrics::{Meter, ObservableCounter, ObservableGauge};
use opentelemetry::KeyValue;

use super::monitor::{DirectionJson, FixReader, FixSessionJson};
use super::wire::EndReason;

/// Instrument names (Prometheus adds `_total` to counters and `_seconds` to the unit `s`).
pub mod names {
    pub const LOGGED_ON: &str = "fix_session_logged_on";
    pub const LOGONS: &str = "fix_session_logons";
    pub const LOGOUTS: &str = "fix_session_logouts";
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

    /// Every name above (the docs' metric tables are checked against it).
    pub const ALL: &[&str] = &[
        LOGGED_ON,
        LOGONS,
        LOGOUTS,
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

type PerSession = fn(&FixSessionJson) -> Vec<(u64, Vec<KeyValue>)>;

fn per_direction(s: &FixSessionJson, f: fn(&DirectionJson) -> u64) -> Vec<(u64, Vec<KeyValue>)> {
    vec![
        (f(&s.inbound), with(base(s), attrs::DIRECTION, "in")),
        (f(&s.outbound), with(base(s), attrs::DIRECTION, "out")),
    ]
}

impl FixInstruments {
    pub fn new(meter: &Meter, reader: FixReader) -> FixInstruments {
        let mut gauges = Vec::new();
        let mut counters = Vec::new();
        let gauge = |name: &'static str,
                     unit: Option<&'static str>,
                     desc: &'static str,
                     f: fn(&FixSessionJson) -> Option<f64>| {
            let r = reader.clone();
            let b = meter.f64_observable_gauge(name).with_description(desc);
            let b = match unit {
                Some(u) => b.with_unit(u),
                None => b,
            };
            b.with_callback(move |obs| {
                for s in &r.get().sessions {
                    if let Some(v) = f(s) {
                        obs.observe(v, &base(s));
                    }
                }
            })
            .build()
        };
        gauges.push(gauge(
            names::LOGGED_ON,
            None,
            "1 while the FIX session is logged on",
            |s| Some(if s.logged_on { 1.0 } else { 0.0 }),
        ));
        gauges.push(gauge(
            names::HEARTBEAT_INTERVAL,
            Some("s"),
            "HeartBtInt from the last Logon",
            |s| s.heartbeat_interval_seconds.map(|h| h as f64),
        ));
        gauges.push(gauge(
            names::INBOUND_SILENCE,
            Some("s"),
            "Time since the last message received on the session",
            |s| s.inbound.silence_seconds,
        ));
        let counter = |name: &'static str, desc: &'static str, f: PerSession| {
            let r = reader.clone();
            meter
                .u64_observable_counter(name)
                .with_description(desc)
                .with_callback(move |obs| {
                    for s in &r.get().sessions {
                        for (v, a) in f(s) {
                            obs.observe(v, &a);
                        }
                    }
                })
                .build()
        };
        counters.push(counter(names::LOGONS, "Logons answered", |s| {
            vec![(s.logons, base(s))]
        }));
        counters.push(counter(
            names::LOGOUTS,
            "Logouts, by who sent the first Logout",
            |s| {
                vec![
                    (s.logouts_us, with(base(s), attrs::INITIATOR, "us")),
                    (s.logouts_them, with(base(s), attrs::INITIATOR, "them")),
                ]
            },
        ));
        counters.push(counter(
            names::MESSAGES,
            "FIX messages by direction and MsgType",
            |s| {
                let mut v = Vec::new();
                for (dir, d) in [("in", &s.inbound), ("out", &s.outbound)] {
                    for (t, n) in &d.by_type {
                        let a = with(
                            with(base(s), attrs::DIRECTION, dir),
                            attrs::MSG_TYPE,
                            t.clone(),
                        );
                        v.push((*n, a));
                    }
                }
                v
            },
        ));
        counters.push(counter(
            names::SEQUENCE_GAPS,
            "MsgSeqNum gaps (not PossDup, not GapFill)",
            |s| per_direction(s, |d| d.sequence_gaps),
        ));
        counters.push(counter(names::RESEND_REQUESTS, "ResendRequests", |s| {
            per_direction(s, |d| d.resend_requests)
        }));
        counters.push(counter(names::TEST_REQUESTS, "TestRequests", |s| {
            per_direction(s, |d| d.test_requests)
        }));
        counters.push(counter(
            names::REJECTS,
            "Session (35=3) and business (35=j) rejects",
            |s| {
                let mut v = Vec::new();
                for (dir, d) in [("in", &s.inbound), ("out", &s.outbound)] {
                    let a = with(base(s), attrs::DIRECTION, dir);
                    v.push((d.session_rejects, with(a.clone(), attrs::KIND, "session")));
                    v.push((d.business_rejects, with(a, attrs::KIND, "business")));
                }
                v
            },
        ));
        counters.push(counter(
            names::ORDERS_UNANSWERED,
            "Orders given up unanswered (expired or over the pending cap)",
            |s| vec![(s.orders_unanswered, base(s))],
        ));
        let selfc =
            |name: &'static str,
             desc: &'static str,
             f: fn(&super::monitor::FixState) -> Vec<(u64, &'static str)>| {
                let r = reader.clone();
                meter
                    .u64_observable_counter(name)
                    .with_description(desc)
                    .with_callback(move |obs| {
                        for (v, src) in f(&r.get()) {
                            obs.observe(v, &[KeyValue::new(attrs::SOURCE, src)]);
                        }
                    })
                    .build()
            };
        counters.push(selfc(names::DECODED, "FIX messages decoded", |s| {
            vec![
                (s.stats.wire.messages, "wire"),
                (s.stats.logs.messages, "log"),
            ]
        }));
        counters.push(selfc(
            names::MALFORMED,
            "Malformed FIX messages skipped",
            |s| {
                vec![
                    (s.stats.wire.malformed, "wire"),
                    (s.stats.logs.malformed, "log"),
                ]
            },
        ));
        counters.push(selfc(
            names::BYTES_SKIPPED,
            "Bytes skipped on the wire (lost in gaps, or before the next 8=FIX)",
            |s| vec![(s.stats.wire.bytes_skipped, "wire")],
        ));
        counters.push(selfc(
            names::CAPTURE_DROPS,
            "Packets the kernel dropped before the capture read them",
            |s| {
                s.stats
                    .capture_drops
                    .map(|d| vec![(d, "wire")])
                    .unwrap_or_default()
            },
        ));
        Self::table_instruments(meter, &reader, &mut gauges, &mut counters);
        FixInstruments {
            _gauges: gauges,
            _counters: counters,
        }
    }

    /// The FIX layer's own tables: the capture's connections (followed now, not followed
    /// because the table was full, ended by why), the other bounds hit, the log files.
    fn table_instruments(
        meter: &Meter,
        reader: &FixReader,
        gauges: &mut Vec<ObservableGauge<f64>>,
        counters: &mut Vec<ObservableCounter<u64>>,
    ) {
        let r = reader.clone();
        gauges.push(
            meter
                .f64_observable_gauge(names::CAPTURE_CONNECTIONS)
                .with_description("TCP connections the wire capture follows now")
                .with_callback(move |obs| {
                    let s = r.get();
                    if s.capture {
                        obs.observe(s.stats.connections_followed as f64, &[]);
                    }
                })
                .build(),
        );
        let r = reader.clone();
        gauges.push(
            meter
                .f64_observable_gauge(names::LOG_FILES)
                .with_description("Engine-log files followed now, and matching files waiting")
                .with_callback(move |obs| {
                    let s = r.get();
                    if !s.logs.is_empty() {
                        let files = [
                            (s.log_files.len() as u64, "followed"),
                            (s.stats.logs.files_not_followed, "not_followed"),
                        ];
                        for (n, state) in files {
                            obs.observe(n as f64, &[KeyValue::new(attrs::STATE, state)]);
                        }
                    }
                })
                .build(),
        );
        let counter =
            |name: &'static str,
             desc: &'static str,
             key: Option<&'static str>,
             f: fn(&super::monitor::FixState) -> Vec<(u64, &'static str)>| {
                let r = reader.clone();
                meter
                    .u64_observable_counter(name)
                    .with_description(desc)
                    .with_callback(move |obs| {
                        for (v, a) in f(&r.get()) {
                            let attrs: Vec<KeyValue> =
                                key.map(|k| KeyValue::new(k, a)).into_iter().collect();
                            obs.observe(v, &attrs);
                        }
                    })
                    .build()
            };
        counters.push(counter(
            names::CAPTURE_NOT_FOLLOWED,
            "Connections the wire capture did not follow because its table was full",
            None,
            |s| match s.capture {
                true => vec![(s.stats.wire.not_followed, "")],
                false => Vec::new(),
            },
        ));
        counters.push(counter(
            names::CAPTURE_ENDED,
            "Connections that left the wire capture's table, by why (fin, reset, tcp_closed: \
             the TCP layer saw it end, idle: never seen by the TCP layer)",
            Some(attrs::REASON),
            |s| match s.capture {
                true => EndReason::ALL
                    .iter()
                    .map(|r| (s.stats.wire.ended.get(*r), r.as_str()))
                    .collect(),
                false => Vec::new(),
            },
        ));
        counters.push(counter(
            names::LIMIT_HITS,
            "Items a bound of the FIX layer turned away: messages of sessions over the session \
             cap, messages folded into msg_type other, orders given up over the pending cap, \
             log lines too long",
            Some(attrs::LIMIT),
            |s| {
                vec![
                    (s.stats.sessions_over_cap, "sessions"),
                    (s.stats.msg_types_folded, "msg_types"),
                    (s.stats.orders_over_cap, "pending_orders"),
                    (s.stats.logs.lines_too_long, "log_line"),
                ]
            },
        ));
    }
}
