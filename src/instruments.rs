//! The OpenTelemetry instruments, and the one vocabulary of metric names and attributes.
//!
//! Counters and histograms are fed by tracker events as they happen; gauges are observed at
//! collection time from [`GaugeValues`], which the poll loop replaces after every poll. A
//! collection (a scrape, an OTLP export) therefore only reads numbers: it never polls.
//!
//! Names are chosen so that the Prometheus exposition (which appends `_total` to counters and
//! the unit to the name) yields exactly the original tool's names: `fix_connections_total`,
//! `fix_connections_active`, ... Cardinality is bounded: the only attributes are the target
//! name (from config) and, for `fix_connections_by_port`, local ports of targets that declare a
//! `local_ports` range, capped at [`BY_PORT_LIMIT`] series.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use opentelemetry::metrics::{Counter, Histogram, Meter};
use opentelemetry::KeyValue;
use opentelemetry_sdk::Resource;

use crate::source::SourceKind;
use crate::target::{TargetId, Targets};
use crate::tracker::{Event, TargetStats, Tracker};

/// Instrument names (before the exporter's unit and `_total` suffixes).
pub mod names {
    pub const ACTIVE: &str = "fix_connections_active";
    /// Exposed as `fix_connections_total`: connections opened (first seen).
    pub const OPENED: &str = "fix_connections";
    /// Exposed as `fix_connections_closed_total`.
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
    pub const METER: &str = "fix-monitor";
}

/// Attribute keys.
pub mod attrs {
    pub const TARGET: &str = "target";
    pub const PORT: &str = "port";
    pub const SOURCE: &str = "source";
    /// Which exporter a self-metric is about (`otlp`).
    pub const EXPORTER: &str = "exporter";
}

/// Most `fix_connections_by_port` series at once; ports past it are left out (and logged once).
pub const BY_PORT_LIMIT: usize = 1024;

/// Lifetime buckets in seconds: from sub-second reconnect storms to week-long sessions.
pub const DURATION_BUCKETS: &[f64] = &[
    0.1, 0.5, 1.0, 5.0, 15.0, 30.0, 60.0, 300.0, 900.0, 1800.0, 3600.0, 7200.0, 14400.0, 28800.0,
    43200.0, 86400.0, 172800.0, 604800.0,
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
        };
        (values, capped)
    }
}

/// The instruments of one sidecar.
pub struct Instruments {
    opened: Counter<u64>,
    closed: Counter<u64>,
    duration: Histogram<f64>,
    poll_duration: Histogram<f64>,
    poll_errors: Counter<u64>,
    target_attrs: Arc<Vec<[KeyValue; 1]>>,
    gauges: Arc<Mutex<GaugeValues>>,
}

impl Instruments {
    /// Creates the instruments. Counters start at 0 for every target (and the error counter
    /// for `source`), so that `rate()` and alert rules see a series before the first event.
    pub fn new(meter: &Meter, targets: &Targets, source: SourceKind) -> Instruments {
        let target_attrs: Arc<Vec<[KeyValue; 1]>> = Arc::new(
            targets
                .iter()
                .map(|t| [KeyValue::new(attrs::TARGET, t.name.clone())])
                .collect(),
        );
        let gauges = Arc::new(Mutex::new(GaugeValues {
            stats: vec![TargetStats::default(); targets.len()],
            by_port: BTreeMap::new(),
        }));

        let per_target = |pick: fn(&TargetStats) -> u64| {
            let gauges = gauges.clone();
            let attrs = target_attrs.clone();
            move |obs: &dyn opentelemetry::metrics::AsyncInstrument<u64>| {
                let g = gauges.lock().unwrap_or_else(|e| e.into_inner());
                for (s, a) in g.stats.iter().zip(attrs.iter()) {
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
        let g = gauges.clone();
        let names: Arc<Vec<String>> = Arc::new(targets.iter().map(|t| t.name.clone()).collect());
        meter
            .u64_observable_gauge(names::BY_PORT)
            .with_description(
                "Active connections by local port (targets with a local_ports range only)",
            )
            .with_callback(move |obs| {
                let g = g.lock().unwrap_or_else(|e| e.into_inner());
                for (&(t, port), &n) in &g.by_port {
                    obs.observe(
                        n,
                        &[
                            KeyValue::new(attrs::TARGET, names[t].clone()),
                            KeyValue::new(attrs::PORT, i64::from(port)),
                        ],
                    );
                }
            })
            .build();

        let instruments = Instruments {
            opened: meter
                .u64_counter(names::OPENED)
                .with_description("Connections opened (first seen) since start")
                .build(),
            closed: meter
                .u64_counter(names::CLOSED)
                .with_description("Connections that ended since start")
                .build(),
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
            poll_errors: meter
                .u64_counter(names::POLL_ERRORS)
                .with_description("Polls of the connection source that failed")
                .build(),
            target_attrs,
            gauges,
        };
        for a in instruments.target_attrs.iter() {
            instruments.opened.add(0, a);
            instruments.closed.add(0, a);
        }
        instruments
            .poll_errors
            .add(0, &[KeyValue::new(attrs::SOURCE, source.as_str())]);
        instruments
    }

    /// Counts what the tracker reported.
    pub fn record_events(&self, events: &[Event]) {
        for e in events {
            match e {
                Event::Opened(c) => self.opened.add(1, &self.target_attrs[c.target]),
                Event::Closed { conn, duration, .. } => {
                    let a = &self.target_attrs[conn.target];
                    self.closed.add(1, a);
                    if !conn.preexisting {
                        self.duration.record(duration.as_secs_f64(), a);
                    }
                }
            }
        }
    }

    /// Records one poll's cost, and its failure if it failed.
    pub fn record_poll(&self, source: SourceKind, elapsed: Duration, ok: bool) {
        let a = [KeyValue::new(attrs::SOURCE, source.as_str())];
        self.poll_duration.record(elapsed.as_secs_f64(), &a);
        if !ok {
            self.poll_errors.add(1, &a);
        }
    }

    /// Replaces what the gauges report at the next collection.
    pub fn set_gauges(&self, values: GaugeValues) {
        *self.gauges.lock().unwrap_or_else(|e| e.into_inner()) = values;
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
