//! The OpenTelemetry instruments, and the one vocabulary of metric names and attributes.
//!
//! Counters and histograms are fed by tracker events as they happen; gauges are observed at
//! collection time from [`GaugeValues`], which the poll loop replaces after every poll. A
//! collection (a scrape, an OTLP export) therefore only reads numbers: it never polls.
//!
//! Names are chosen so that the Prometheus exposition (which appends `_total` to counters and
//! the unit to the name) yields exactly the original tool's names: `fix_connections_total`,
//! `fix_connections_active`, ... Cardinality is bounded: the only attributes are the target
//! name (from config), who hung up (`by`, four values) on `fix_connections_closed_total`, and,
//! for `fix_connections_by_port`, local ports of targets that declare a `local_ports` range,
//! capped at [`BY_PORT_LIMIT`] series.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use opentelemetry::metrics::{Counter, Histogram, Meter};
use opentelemetry::KeyValue;
use opentelemetry_sdk::Resource;

use crate::ends::Cause;
use crate::health::{GroupHealth, HealthPoll};
use crate::schedule::Schedule;
use crate::source::{Capabilities, ClosedBy, SourceKind};
use crate::target::{Remap, TargetId, Targets};
use crate::tracker::{ConnKey, Event, TargetStats, Tracker};

/// Instrument names (before the exporter's unit and `_total` suffixes).
pub mod names {
    pub const ACTIVE: &str = "fix_connections_active";
    /// Exposed as `fix_connections_total`: connections opened (first seen).
    pub const OPENED: &str = "fix_connections";
    /// Exposed as `fix_connections_closed_total`, with the `by` attribute (who hung up).
    pub const CLOSED: &str = "fix_connections_closed";
    pub const PEAK: &str = "fix_connections_peak";
    /// Exposed as `fix_connection_duration_seconds`.
    pub const DURATION: &str = "fix_connection_duration";
    pub const BY_PORT: &str = "fix_connections_by_port";
    /// Exposed as `fix_monitor_poll_duration_seconds`.
    pub const POLL_DURATION: &str = "fix_monitor_poll_duration";
    /// Exposed as `fix_monitor_poll_errors_total`.
    pub const POLL_ERRORS: &str = "fix_monitor_poll_errors";
    /// Exposed as `fix_monitor_export_errors_total`; only with OTLP push on (see
    /// `export::otlp`).
    pub const EXPORT_ERRORS: &str = "fix_monitor_export_errors";
    /// Session event log records given up on (`export::logs`).
    pub const LOG_RECORDS_DROPPED: &str = "fix_monitor_log_records_dropped";
    /// Exposed as `fix_connections_short_lived_total`: sessions that opened and closed between
    /// two polls, known from their kernel close event alone (also in opened and closed).
    pub const SHORT_LIVED: &str = "fix_connections_short_lived";
    /// Exposed as `fix_monitor_events_lost_total`: close events the kernel dropped (a full
    /// buffer); each loss is reconciled by an immediate poll.
    pub const EVENTS_LOST: &str = "fix_monitor_events_lost";
    /// Exposed as `fix_monitor_reconciles_total`: times the eBPF source reconciled its view (a
    /// full dump at start, then from its programs' table every `poll.reconcile_interval` and
    /// after a loss).
    pub const RECONCILES: &str = "fix_monitor_reconciles";
    /// Exposed as `fix_monitor_false_closes_avoided_total`: sockets a poll missed that an exact
    /// lookup found still ESTABLISHED (a close and a reconnect that would have been false).
    pub const FALSE_CLOSES_AVOIDED: &str = "fix_monitor_false_closes_avoided";
    /// Exposed as `fix_monitor_events_unattributed_total`: close events of aborted sockets no
    /// poll saw whose incomplete 4-tuple fits more than one target, or a target's address with
    /// a port that may not be its: not counted as sessions.
    pub const EVENTS_UNATTRIBUTED: &str = "fix_monitor_events_unattributed";
    /// Exposed as `fix_session_ends_total`: sessions that ended, by why (`cause`, see
    /// `crate::ends::Cause`), judged from the TCP layer, the FIX layer and the schedule.
    pub const ENDS: &str = "fix_session_ends";
    pub const METER: &str = "fix-monitor";
    // Session health (netlink only; see `crate::health`).
    pub const STALE: &str = "fix_connections_stale";
    /// Exposed as `fix_connection_receive_silence_seconds`.
    pub const SILENCE: &str = "fix_connection_receive_silence";
    /// Exposed as `fix_connection_rtt_seconds`.
    pub const RTT: &str = "fix_connection_rtt";
    /// Exposed as `fix_connection_retransmits_total`.
    pub const RETRANSMITS: &str = "fix_connection_retransmits";
    /// Exposed as `fix_connection_send_queue_bytes`.
    pub const SEND_QUEUE: &str = "fix_connection_send_queue";
    /// Exposed as `fix_connection_received_bytes_total`.
    pub const RECEIVED: &str = "fix_connection_received";
    /// Exposed as `fix_connection_sent_bytes_total`.
    pub const SENT: &str = "fix_connection_sent";
    pub const STALE_BY_PORT: &str = "fix_connections_stale_by_port";
    /// Exposed as `fix_connection_receive_silence_by_port_seconds`.
    pub const SILENCE_BY_PORT: &str = "fix_connection_receive_silence_by_port";
    /// Exposed as `fix_connection_rtt_by_port_seconds`.
    pub const RTT_BY_PORT: &str = "fix_connection_rtt_by_port";
    /// Exposed as `fix_connection_send_queue_by_port_bytes`.
    pub const SEND_QUEUE_BY_PORT: &str = "fix_connection_send_queue_by_port";
    /// Exposed as `fix_connection_retransmits_by_port_total`.
    pub const RETRANSMITS_BY_PORT: &str = "fix_connection_retransmits_by_port";
    /// 1 while the target's schedule expects its sessions up, 0 outside its window; 1 for a
    /// target without a schedule (`crate::schedule`).
    pub const EXPECTED_UP: &str = "fix_target_expected_up";
    /// Counter: writes of the state file (`[state] dir`) that failed (a full or read-only
    /// disk); each is retried at the next save.
    pub const STATE_WRITE_ERRORS: &str = "fix_monitor_state_write_errors";
    /// Counter: connections the HTTP endpoint failed to accept (`crate::export::server`).
    pub const ENDPOINT_ACCEPT_ERRORS: &str = "fix_monitor_endpoint_accept_errors";

    /// Every metric name above (not [`METER`]). The docs' metric tables are checked against
    /// it (tests/integration/metric_docs.rs), which also finds a name missing here.
    pub const ALL: &[&str] = &[
        ACTIVE,
        OPENED,
        CLOSED,
        PEAK,
        DURATION,
        BY_PORT,
        POLL_DURATION,
        POLL_ERRORS,
        EXPORT_ERRORS,
        LOG_RECORDS_DROPPED,
        SHORT_LIVED,
        EVENTS_LOST,
        RECONCILES,
        FALSE_CLOSES_AVOIDED,
        EVENTS_UNATTRIBUTED,
        ENDS,
        STALE,
        SILENCE,
        RTT,
        RETRANSMITS,
        SEND_QUEUE,
        RECEIVED,
        SENT,
        STALE_BY_PORT,
        SILENCE_BY_PORT,
        RTT_BY_PORT,
        SEND_QUEUE_BY_PORT,
        RETRANSMITS_BY_PORT,
        EXPECTED_UP,
        STATE_WRITE_ERRORS,
        ENDPOINT_ACCEPT_ERRORS,
    ];
}

/// Attribute keys.
pub mod attrs {
    pub const TARGET: &str = "target";
    pub const PORT: &str = "port";
    pub const SOURCE: &str = "source";
    /// Which exporter a self-metric is about (`otlp`).
    pub const EXPORTER: &str = "exporter";
    /// Who hung up, on `fix_connections_closed_total`: `local`, `remote`, `reset`, `unknown`
    /// ([`crate::source::ClosedBy`]).
    pub const BY: &str = "by";
    /// Why a session ended, on `fix_session_ends_total` ([`crate::ends::Cause`]).
    pub const CAUSE: &str = "cause";
}

/// Most `fix_connections_by_port` series at once; ports past it are left out (and logged once).
pub const BY_PORT_LIMIT: usize = 1024;

/// Lifetime buckets in seconds: from sub-second reconnect storms to week-long sessions.
pub const DURATION_BUCKETS: &[f64] = &[
    0.1, 0.5, 1.0, 5.0, 15.0, 30.0, 60.0, 300.0, 900.0, 1800.0, 3600.0, 7200.0, 14400.0, 28800.0,
    43200.0, 86400.0, 172800.0, 604800.0,
];

/// RTT buckets in seconds: from co-located venues (10 µs) to intercontinental paths (1 s).
pub const RTT_BUCKETS: &[f64] = &[
    0.00001, 0.000025, 0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05,
    0.1, 0.25, 0.5, 1.0,
];

/// Poll duration buckets in seconds: a healthy netlink poll takes well under a millisecond.
pub const POLL_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
];

/// The values the gauges report at the next collection.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct GaugeValues {
    /// Indexed by target id.
    pub stats: Vec<TargetStats>,
    /// (target, local port) -> active connections, only for targets with `local_ports`.
    pub by_port: BTreeMap<(TargetId, u16), u64>,
    /// Session health per target (empty without netlink: the series are left out).
    pub health: Vec<GroupHealth>,
    /// Session health per (target, local port), for targets with `local_ports`, capped at
    /// [`BY_PORT_LIMIT`].
    pub health_ports: BTreeMap<(TargetId, u16), GroupHealth>,
}

impl GaugeValues {
    /// Reads the gauges' values off the tracker. Returns whether the port cap cut series.
    pub fn from_tracker(tracker: &Tracker) -> (GaugeValues, bool) {
        let targets = tracker.targets();
        let mut by_port = BTreeMap::new();
        let mut capped = false;
        for c in tracker.active() {
            if targets.get(c.target).local_ports.is_none() {
                continue;
            }
            let k = (c.target, c.key.local.port());
            if by_port.len() >= BY_PORT_LIMIT && !by_port.contains_key(&k) {
                capped = true;
                continue;
            }
            *by_port.entry(k).or_insert(0) += 1;
        }
        let values = GaugeValues {
            stats: tracker.stats().to_vec(),
            by_port,
            health: Vec::new(),
            health_ports: BTreeMap::new(),
        };
        (values, capped)
    }

    /// Adds one poll's session health. Returns whether the port cap cut series.
    pub fn with_health(&mut self, poll: &HealthPoll) -> bool {
        self.health = poll.targets.clone();
        self.health_ports = poll
            .ports
            .iter()
            .take(BY_PORT_LIMIT)
            .map(|(k, g)| (*k, g.clone()))
            .collect();
        poll.ports.len() > BY_PORT_LIMIT
    }
}

/// The session-health instruments that are not observed at collection (netlink only).
struct HealthInstruments {
    rtt: Histogram<f64>,
    retransmits: Counter<u64>,
    received: Counter<u64>,
    sent: Counter<u64>,
    retransmits_by_port: Counter<u64>,
    /// The (target, port) series of `retransmits_by_port` so far, to keep within the cap.
    ports: Mutex<std::collections::BTreeSet<(TargetId, u16)>>,
}

/// What the observable instruments read at collection: the values the loop set, and the
/// targets' labels. Registered once for the provider's life (the SDK keeps a callback as long
/// as the provider), so a reload swaps what is in here rather than registering again.
#[derive(Debug, Default)]
struct Observed {
    values: GaugeValues,
    /// `target` attributes, by target id.
    attrs: Arc<Vec<[KeyValue; 1]>>,
    /// Target names, by target id.
    names: Arc<Vec<String>>,
    /// By target id: inside its schedule's window (always for a target without one); set by
    /// the loop from its clock.
    expected_up: Vec<bool>,
}

impl Observed {
    fn of(targets: &Targets) -> Observed {
        Observed {
            values: GaugeValues {
                stats: vec![TargetStats::default(); targets.len()],
                ..GaugeValues::default()
            },
            attrs: Arc::new(target_attrs(targets)),
            names: Arc::new(targets.iter().map(|t| t.name.clone()).collect()),
            expected_up: vec![true; targets.len()],
        }
    }
}

/// The `target` attribute of each target, by id.
fn target_attrs(targets: &Targets) -> Vec<[KeyValue; 1]> {
    (targets.iter())
        .map(|t| [KeyValue::new(attrs::TARGET, t.name.clone())])
        .collect()
}

/// `target` and `by` for `fix_connections_closed_total`, per target, indexed by [`ClosedBy`]
/// as in [`ClosedBy::ALL`].
fn closed_attrs(targets: &Targets) -> Vec<[[KeyValue; 2]; 4]> {
    (targets.iter())
        .map(|t| {
            ClosedBy::ALL.map(|by| {
                [
                    KeyValue::new(attrs::TARGET, t.name.clone()),
                    KeyValue::new(attrs::BY, by.as_str()),
                ]
            })
        })
        .collect()
}

/// The instruments of one sidecar.
pub struct Instruments {
    opened: Counter<u64>,
    closed: Counter<u64>,
    duration: Histogram<f64>,
    poll_duration: Histogram<f64>,
    poll_errors: Counter<u64>,
    short_lived: Counter<u64>,
    events_lost: Counter<u64>,
    /// eBPF source only.
    reconciles: Option<Counter<u64>>,
    false_closes_avoided: Counter<u64>,
    events_unattributed: Counter<u64>,
    ends: Counter<u64>,
    state_write_errors: Counter<u64>,
    target_attrs: Arc<Vec<[KeyValue; 1]>>,
    /// `target` and `by` for `closed`, per target, indexed by [`ClosedBy`] as in
    /// [`ClosedBy::ALL`].
    closed_attrs: Vec<[[KeyValue; 2]; 4]>,
    observed: Arc<Mutex<Observed>>,
    health: Option<HealthInstruments>,
    /// What the counters started at 0 for ([`Instruments::start_at_zero`]), and the causes of
    /// [`Instruments::start_ends_at_zero`]: again for a reload's new targets.
    zero: (SourceKind, Capabilities),
    end_causes: Vec<Cause>,
}

/// A `u64` counter named `name`.
fn counter(meter: &Meter, name: &'static str, description: &'static str) -> Counter<u64> {
    meter
        .u64_counter(name)
        .with_description(description)
        .build()
}

impl Instruments {
    /// Creates the instruments. Counters start at 0 for every target (and the error counter
    /// for `source`), so that `rate()` and alert rules see a series before the first event.
    /// Which instruments exist follows what the source can do (`caps`).
    pub fn new(
        meter: &Meter,
        targets: &Targets,
        source: SourceKind,
        caps: Capabilities,
    ) -> Instruments {
        let observed = Observed::of(targets);
        let shared_attrs = observed.attrs.clone();
        let observed = Arc::new(Mutex::new(observed));
        connection_gauges(meter, &observed);
        expected_up_gauge(meter, &observed);

        let instruments = Instruments {
            opened: counter(meter, names::OPENED, "Connections opened (first seen) since start"),
            closed: counter(meter, names::CLOSED, "Connections that ended since start"),
            duration: meter
                .f64_histogram(names::DURATION)
                .with_unit("s")
                .with_description(
                    "Lifetime of closed connections, first seen to first missed (precision: one poll interval); connections open before the monitor started are not included",
                )
                .with_boundaries(DURATION_BUCKETS.to_vec())
                .build(),
            poll_duration: meter
                .f64_histogram(names::POLL_DURATION)
                .with_unit("s")
                .with_description("Time one poll of the connection source took")
                .with_boundaries(POLL_BUCKETS.to_vec())
                .build(),
            poll_errors: counter(meter, names::POLL_ERRORS, "Polls of the connection source that failed"),
            health: caps
                .health
                .available()
                .then(|| health_instruments(meter, &observed)),
            short_lived: counter(meter, names::SHORT_LIVED, "Connections that opened and closed between two polls, known from their kernel close event (counted in opened and closed too; no duration)"),
            events_lost: counter(meter, names::EVENTS_LOST, "Kernel close events (netlink) or state-change records (eBPF ring buffer) dropped by a full buffer; each loss triggers an immediate poll (netlink) or a reconcile (eBPF)"),
            reconciles: caps
                .reconciles
                .then(|| counter(meter, names::RECONCILES, "Reconciles of the eBPF source's view: a full sock_diag dump at start, then from its programs' table of watched sessions every poll.reconcile_interval and after a loss (a dump again if that table was full)")),
            false_closes_avoided: counter(meter, names::FALSE_CLOSES_AVOIDED, "Connections missing from a poll that an exact kernel lookup found still established"),
            events_unattributed: counter(meter, names::EVENTS_UNATTRIBUTED, "Close events of aborted connections no poll saw that could not be attributed to one target without doubt"),
            state_write_errors: counter(meter, names::STATE_WRITE_ERRORS, "Writes of the state file that failed (the state directory full or read-only); the sessions' starts stay in memory and the write is retried at the next save"),
            ends: counter(meter, names::ENDS, "Sessions that ended, by why (cause): judged from who hung up, the kernel's reason, the FIX layer's account (Logout, refused Logon, unanswered TestRequest, sequence complaint) and the target's schedule"),
            closed_attrs: closed_attrs(targets),
            target_attrs: shared_attrs,
            observed,
            zero: (source, caps),
            end_causes: Vec::new(),
        };
        instruments.start_at_zero(source, caps);
        instruments
    }

    /// Adds 0 to every counter series a dashboard may look for before the first event.
    fn start_at_zero(&self, source: SourceKind, caps: Capabilities) {
        // Only the `by` values this source can tell start at 0: polling alone never knows who
        // hung up, and a `by="local"` series stuck at 0 there would pass for a measurement.
        let known: &[ClosedBy] = if caps.closed_by {
            &ClosedBy::ALL
        } else {
            &[ClosedBy::Unknown]
        };
        for by in known {
            for a in &self.closed_attrs {
                self.closed.add(0, &a[by_index(*by)]);
            }
        }
        for a in self.target_attrs.iter() {
            self.opened.add(0, a);
            if let Some(h) = &self.health {
                h.retransmits.add(0, a);
                h.received.add(0, a);
                h.sent.add(0, a);
            }
            self.short_lived.add(0, a);
        }
        self.events_lost.add(0, &[]);
        self.record_reconciles(0);
        self.false_closes_avoided.add(0, &[]);
        self.events_unattributed.add(0, &[]);
        self.poll_errors
            .add(0, &[KeyValue::new(attrs::SOURCE, source.as_str())]);
    }

    /// Counts what the tracker reported; `by` says who hung up for each close (what the source
    /// saw, [`ClosedBy::Unknown`] where it saw nothing).
    pub fn record_events(&self, events: &[Event], by: impl Fn(&ConnKey) -> ClosedBy) {
        for e in events {
            match e {
                Event::Opened(c) => self.opened.add(1, &self.target_attrs[c.target]),
                Event::ShortLived { conn, .. } => {
                    let a = &self.target_attrs[conn.target];
                    self.opened.add(1, a);
                    self.closed
                        .add(1, &self.closed_attrs[conn.target][by_index(by(&conn.key))]);
                    self.short_lived.add(1, a);
                }
                Event::Closed { conn, duration, .. } => {
                    let a = &self.target_attrs[conn.target];
                    self.closed
                        .add(1, &self.closed_attrs[conn.target][by_index(by(&conn.key))]);
                    if !conn.preexisting {
                        self.duration.record(duration.as_secs_f64(), a);
                    }
                }
            }
        }
    }

    /// One session of `target` ended, for `cause`.
    /// One write of the state file failed (`n` = 1), or its series starts at 0 (`n` = 0).
    pub fn record_state_write_errors(&self, n: u64) {
        self.state_write_errors.add(n, &[]);
    }

    pub fn record_end(&self, target: TargetId, cause: Cause) {
        self.ends.add(1, &self.end_attrs(target, cause));
    }

    /// Adds 0 to the `fix_session_ends_total` series of `causes`, for every target: the causes
    /// this sidecar can tell (`crate::ends::possible`), so that no series stuck at 0 passes for
    /// a measurement of what it cannot see.
    pub fn start_ends_at_zero(&mut self, causes: &[Cause]) {
        self.end_causes = causes.to_vec();
        for target in 0..self.target_attrs.len() {
            for &cause in causes {
                self.ends.add(0, &self.end_attrs(target, cause));
            }
        }
    }

    fn end_attrs(&self, target: TargetId, cause: Cause) -> [KeyValue; 2] {
        [
            self.target_attrs[target][0].clone(),
            KeyValue::new(attrs::CAUSE, cause.as_str()),
        ]
    }

    /// Records one poll's cost, and its failure if it failed.
    pub fn record_poll(&self, source: SourceKind, elapsed: Duration, ok: bool) {
        let a = [KeyValue::new(attrs::SOURCE, source.as_str())];
        self.poll_duration.record(elapsed.as_secs_f64(), &a);
        if !ok {
            self.poll_errors.add(1, &a);
        }
    }

    /// Records one poll's session health: RTT samples and counter growth (a no-op without
    /// netlink). Returns whether the port cap cut series.
    pub fn record_health(&self, poll: &HealthPoll) -> bool {
        let Some(h) = &self.health else { return false };
        for (t, rtt) in &poll.rtt_samples {
            h.rtt.record(rtt.as_secs_f64(), &self.target_attrs[*t]);
        }
        for (g, a) in poll.targets.iter().zip(self.target_attrs.iter()) {
            h.retransmits.add(g.growth.retransmits, a);
            h.received.add(g.growth.bytes_received, a);
            h.sent.add(g.growth.bytes_sent, a);
        }
        let mut ports = h.ports.lock().unwrap_or_else(|e| e.into_inner());
        let mut capped = false;
        for (&(t, port), g) in &poll.ports {
            if !ports.contains(&(t, port)) {
                if ports.len() >= BY_PORT_LIMIT {
                    capped = true;
                    continue;
                }
                ports.insert((t, port));
            }
            let a = [
                self.target_attrs[t][0].clone(),
                KeyValue::new(attrs::PORT, i64::from(port)),
            ];
            h.retransmits_by_port.add(g.growth.retransmits, &a);
        }
        capped
    }

    /// Counts kernel close events lost to a full buffer.
    pub fn record_events_lost(&self, n: u64) {
        self.events_lost.add(n, &[]);
    }

    /// Counts the eBPF source's reconciles (nothing for other sources).
    pub fn record_reconciles(&self, n: u64) {
        if let Some(c) = &self.reconciles {
            c.add(n, &[]);
        }
    }

    /// Counts the tracker's self-checks since the last call: false closes avoided, close
    /// events left unattributed.
    pub fn record_checks(&self, false_closes_avoided: u64, unattributed: u64) {
        if false_closes_avoided > 0 {
            self.false_closes_avoided.add(false_closes_avoided, &[]);
        }
        if unattributed > 0 {
            self.events_unattributed.add(unattributed, &[]);
        }
    }

    /// Replaces what the gauges report at the next collection.
    pub fn set_gauges(&self, values: GaugeValues) {
        self.observed
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .values = values;
    }

    /// The targets reloaded (`remap` maps the current ones onto `targets` by name). The
    /// instruments stay registered; a target that stays keeps its series (the SDK keeps a
    /// counter's values by attributes), a new one gets its counters at 0, a removed one's
    /// gauges are no longer observed (its counters keep their last values until a restart:
    /// the SDK does not forget a cumulative series).
    pub fn retarget(&mut self, targets: &Targets, remap: &Remap) {
        let fresh = Observed::of(targets);
        self.target_attrs = fresh.attrs.clone();
        self.closed_attrs = closed_attrs(targets);
        *self.observed.lock().unwrap_or_else(|e| e.into_inner()) = fresh;
        if let Some(h) = &self.health {
            let mut ports = h.ports.lock().unwrap_or_else(|e| e.into_inner());
            *ports = (ports.iter())
                .filter_map(|&(old, port)| Some((remap.old_to_new[old]?, port)))
                .collect();
        }
        let (source, caps) = self.zero;
        self.start_at_zero(source, caps);
        let causes = std::mem::take(&mut self.end_causes);
        self.start_ends_at_zero(&causes);
    }

    /// Sets `fix_target_expected_up` of every target at `at` from its schedule (by target id;
    /// a target without one, or past the end of `schedules`, is always expected up).
    pub fn set_expected_up(&self, schedules: &[Option<Arc<Schedule>>], at: SystemTime) {
        let mut o = self.observed.lock().unwrap_or_else(|e| e.into_inner());
        for (i, up) in o.expected_up.iter_mut().enumerate() {
            let schedule = schedules.get(i).and_then(Option::as_ref);
            *up = schedule.is_none_or(|s| s.expected_up(at));
        }
    }
}

/// Registers `fix_target_expected_up`: one series for every target, always.
fn expected_up_gauge(meter: &Meter, observed: &Arc<Mutex<Observed>>) {
    let observed = observed.clone();
    meter
        .u64_observable_gauge(names::EXPECTED_UP)
        .with_description("1 while the target's schedule expects its sessions up, 0 outside its window (1 for a target without a schedule)")
        .with_callback(move |obs| {
            let o = observed.lock().unwrap_or_else(|e| e.into_inner());
            for (u, a) in o.expected_up.iter().zip(o.attrs.iter()) {
                obs.observe(u64::from(*u), a);
            }
        })
        .build();
}

/// Where `by` sits in [`ClosedBy::ALL`] (and in [`Instruments::closed_attrs`]).
fn by_index(by: ClosedBy) -> usize {
    match by {
        ClosedBy::Local => 0,
        ClosedBy::Remote => 1,
        ClosedBy::Reset => 2,
        ClosedBy::Unknown => 3,
    }
}

/// Registers the gauges of established connections: per target (active, peak) and per local
/// port; they observe [`GaugeValues::stats`] and [`GaugeValues::by_port`] at collection.
fn connection_gauges(meter: &Meter, observed: &Arc<Mutex<Observed>>) {
    let per_target = |pick: fn(&TargetStats) -> u64| {
        let observed = observed.clone();
        move |obs: &dyn opentelemetry::metrics::AsyncInstrument<u64>| {
            let g = observed.lock().unwrap_or_else(|e| e.into_inner());
            for (s, a) in g.values.stats.iter().zip(g.attrs.iter()) {
                obs.observe(pick(s), a);
            }
        }
    };
    meter
        .u64_observable_gauge(names::ACTIVE)
        .with_description("Established connections to the target now")
        .with_callback(per_target(|s| s.active))
        .build();
    meter
        .u64_observable_gauge(names::PEAK)
        .with_description("Highest number of active connections to the target since start")
        .with_callback(per_target(|s| s.peak))
        .build();
    let g = observed.clone();
    meter
        .u64_observable_gauge(names::BY_PORT)
        .with_description(
            "Active connections by local port (targets with a local_ports range only)",
        )
        .with_callback(move |obs| {
            let g = g.lock().unwrap_or_else(|e| e.into_inner());
            for (&(t, port), &n) in &g.values.by_port {
                obs.observe(
                    n,
                    &[
                        KeyValue::new(attrs::TARGET, g.names[t].clone()),
                        KeyValue::new(attrs::PORT, i64::from(port)),
                    ],
                );
            }
        })
        .build();
}

/// Registers the session-health gauges: they observe [`GaugeValues::health`] and
/// [`GaugeValues::health_ports`] at collection; a value nobody measured is not observed.
fn health_gauges(meter: &Meter, observed: &Arc<Mutex<Observed>>) {
    fn per_target<T: 'static>(
        observed: &Arc<Mutex<Observed>>,
        pick: fn(&GroupHealth) -> Option<T>,
    ) -> impl Fn(&dyn opentelemetry::metrics::AsyncInstrument<T>) + Send + Sync + 'static {
        let observed = observed.clone();
        move |obs| {
            let g = observed.lock().unwrap_or_else(|e| e.into_inner());
            for (h, a) in g.values.health.iter().zip(g.attrs.iter()) {
                if let Some(v) = pick(h) {
                    obs.observe(v, a);
                }
            }
        }
    }
    fn per_port<T: 'static>(
        observed: &Arc<Mutex<Observed>>,
        pick: fn(&GroupHealth) -> Option<T>,
    ) -> impl Fn(&dyn opentelemetry::metrics::AsyncInstrument<T>) + Send + Sync + 'static {
        let observed = observed.clone();
        move |obs| {
            let g = observed.lock().unwrap_or_else(|e| e.into_inner());
            for (&(t, port), h) in &g.values.health_ports {
                if let Some(v) = pick(h) {
                    obs.observe(
                        v,
                        &[
                            KeyValue::new(attrs::TARGET, g.names[t].clone()),
                            KeyValue::new(attrs::PORT, i64::from(port)),
                        ],
                    );
                }
            }
        }
    }
    meter
        .u64_observable_gauge(names::STALE)
        .with_unit("{session}")
        .with_description("Sessions that have received no data for longer than the target's stale_after (targets with heartbeat or stale_after only)")
        .with_callback(per_target(observed, |h| h.stale))
        .build();
    meter
        .f64_observable_gauge(names::SILENCE)
        .with_unit("s")
        .with_description(
            "The longest time since data was received among the target's active sessions",
        )
        .with_callback(per_target(observed, |h| {
            h.max_silence.map(|d| d.as_secs_f64())
        }))
        .build();
    meter
        .u64_observable_gauge(names::SEND_QUEUE)
        .with_unit("By")
        .with_description("The largest send queue (bytes written, not yet acknowledged) among the target's sessions")
        .with_callback(per_target(observed, |h| h.max_send_queue))
        .build();
    meter
        .u64_observable_gauge(names::STALE_BY_PORT)
        .with_unit("{session}")
        .with_description(
            "Stale sessions by local port (targets with local_ports and heartbeat or stale_after)",
        )
        .with_callback(per_port(observed, |h| h.stale))
        .build();
    meter
        .f64_observable_gauge(names::SILENCE_BY_PORT)
        .with_unit("s")
        .with_description("Time since data was received, by local port (targets with local_ports)")
        .with_callback(per_port(observed, |h| {
            h.max_silence.map(|d| d.as_secs_f64())
        }))
        .build();
    meter
        .f64_observable_gauge(names::RTT_BY_PORT)
        .with_unit("s")
        .with_description("Smoothed RTT by local port, the highest if several sessions share it (targets with local_ports)")
        .with_callback(per_port(observed, |h| h.max_rtt.map(|d| d.as_secs_f64())))
        .build();
    meter
        .u64_observable_gauge(names::SEND_QUEUE_BY_PORT)
        .with_unit("By")
        .with_description("Send queue by local port (targets with local_ports)")
        .with_callback(per_port(observed, |h| h.max_send_queue))
        .build();
}

/// Builds the session-health instruments: the gauges ([`health_gauges`]), the RTT histogram
/// and the counters.
fn health_instruments(meter: &Meter, observed: &Arc<Mutex<Observed>>) -> HealthInstruments {
    health_gauges(meter, observed);
    HealthInstruments {
        rtt: meter
            .f64_histogram(names::RTT)
            .with_unit("s")
            .with_description("Smoothed round-trip time of the target's sessions, one sample per session per poll")
            .with_boundaries(RTT_BUCKETS.to_vec())
            .build(),
        retransmits: meter
            .u64_counter(names::RETRANSMITS)
            .with_unit("{segment}")
            .with_description("TCP segments the target's sessions retransmitted")
            .build(),
        received: meter
            .u64_counter(names::RECEIVED)
            .with_unit("By")
            .with_description("Data bytes received from the target")
            .build(),
        sent: meter
            .u64_counter(names::SENT)
            .with_unit("By")
            .with_description("Data bytes sent to the target, retransmissions included")
            .build(),
        retransmits_by_port: meter
            .u64_counter(names::RETRANSMITS_BY_PORT)
            .with_unit("{segment}")
            .with_description("Retransmitted segments by local port (targets with local_ports)")
            .build(),
        ports: Mutex::new(Default::default()),
    }
}

/// The `host.name` a resource carries (what every export and endpoint calls this host).
pub fn host_name(resource: &Resource) -> String {
    resource
        .get(&opentelemetry::Key::new("host.name"))
        .map(|v| v.as_str().into_owned())
        .unwrap_or_default()
}

/// The `host.name` that `OTEL_RESOURCE_ATTRIBUTES` sets, if it does: what [`resource`] would
/// carry instead of the machine's hostname. Asks the SDK's environment detector alone (the
/// same reader [`resource`] uses), without building a whole resource.
pub fn configured_host_name() -> Option<String> {
    use opentelemetry_sdk::resource::{EnvResourceDetector, ResourceDetector};
    EnvResourceDetector::new()
        .detect()
        .get(&opentelemetry::Key::new("host.name"))
        .map(|v| v.as_str().into_owned())
}

/// The resource every export carries: `service.name` (default `fix-monitor`), `service.version`,
/// `host.name`, `service.instance.id`. `OTEL_SERVICE_NAME` and `OTEL_RESOURCE_ATTRIBUTES`
/// (read by the SDK's own detectors) override any of them.
pub fn resource(host: &str) -> Resource {
    let detected = Resource::builder().build();
    let ours = [
        KeyValue::new("service.name", "fix-monitor"),
        KeyValue::new("service.version", env!("CARGO_PKG_VERSION")),
        KeyValue::new("host.name", host.to_string()),
        KeyValue::new("service.instance.id", uuid::Uuid::new_v4().to_string()),
    ];
    let from_env = detected.iter().filter(|(k, v)| {
        // The SDK's fallback name is not a choice anyone made.
        !(k.as_str() == "service.name" && v.as_str().starts_with("unknown_service"))
    });
    Resource::builder_empty()
        .with_attributes(ours)
        .with_attributes(from_env.map(|(k, v)| KeyValue::new(k.clone(), v.clone())))
        .build()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn by_index_follows_closed_by_all() {
        for (i, by) in ClosedBy::ALL.iter().enumerate() {
            assert_eq!(by_index(*by), i, "{by:?}");
        }
    }
}
