//! A fleet: three FIX gateways, each in its own network namespace with its own fix-monitor and
//! its own hostname, connected over a bridge to one downstream namespace that holds the venues
//! and one Prometheus scraping all three sidecars. Each gateway is a simulated FIX engine (the
//! FIX simulator's initiator, `fix::sim::Peer`, driven by the test from inside its namespace):
//! it logs on a different, known number of FIX sessions at venue-a and venue-b, keeps some
//! logged on, logs the others out (it sends the first Logout) and closes them, and retries its
//! logon at venue-c, which refuses every one (a Logout, "Invalid password", then it closes, as a
//! venue refusing a logon does). The venues are the simulator's acceptors (`fix::sim::Venue`,
//! threads of the test in the downstream namespace). Every sidecar reads FIX off the wire
//! (`[fix] capture = true`: root in its namespace). Prometheus must have each host's numbers,
//! the TCP layer's and the FIX layer's (logons, refused logons, logouts, why each session
//! ended), under its own `host` label, and the fleet-wide sums; the venues' own counts of
//! logons and refusals must be the plan's too.
//!
//! ```text
//!   ns gw1 (hostname gw-1)      ns gw2 (hostname gw-2)      ns gw3 (uts "container-7f3a",
//!   10.200.0.11 fix-monitor     10.200.0.12 fix-monitor      OTEL host.name=gw-3) 10.200.0.13
//!        |  :9464                    |  :9464                    |  :9464
//!        +---------- veth ------- br0 10.200.0.1 ------ veth ----+
//!          ns ds: venue-a, venue-b (accept), venue-c (refuses), another listener; Prometheus
//! ```
//! 10.200.0.0/24 exists only inside these namespaces, which the test creates and deletes.
//!
//! A refused logon's TCP session lives about a millisecond, shorter than a poll: whether a poll
//! listed it decides whether it is short-lived or has a lifetime (and the target's peak), so at
//! venue-c only their sum is checked (each close is one or the other); every other number is
//! checked exactly.
//!
//! Sidecars are started as an operator would: `ip netns exec NS unshare --uts sh -c 'hostname
//! NAME && exec fix-monitor run --config FILE --listen 0.0.0.0:9464 ...'`. The `host` label
//! comes from `gethostname(2)` unless `OTEL_RESOURCE_ATTRIBUTES` sets `host.name`: gw-1 and gw-2
//! use the first way, gw-3 the second (its UTS hostname is something else, and must lose).
//!
//! OTLP: see the "OTLP WIRE-IN" section below: the same three sidecars are to push into one
//! VictoriaMetrics, and the same checks then run against it.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use fix_monitor::fix::sim::{Counts, LogonAnswer, Peer, Venue, VenueBehaviour, VenueRecord};

use crate::backends::{die_with_parent, scrape_config, Backend, Sample};
use crate::harness::{bin, config_file, connect_from, http_get, Downstream, Sidecar};
use crate::netns::{Lan, NetNs};

const LAN: [u8; 3] = [10, 200, 0];
const DS_HOST: u8 = 1;
const METRICS_PORT: u16 = 9464;
const JOB: &str = "fix-monitor";
/// The targets: two venues that accept every logon, and venue-c, which refuses every one.
const TARGETS: [&str; 3] = ["venue-a", "venue-b", "venue-c"];
/// The venues' CompIDs, in the order of [`TARGETS`].
const VENUE_COMP_IDS: [&str; 3] = ["VENUE-A", "VENUE-B", "VENUE-C"];
/// How many of [`TARGETS`] accept logons (the first ones).
const ACCEPTING: usize = 2;
/// The refusing venue's index in [`TARGETS`].
const REFUSING: usize = 2;
/// The Text of venue-c's Logout refusing a logon.
const REFUSAL: &str = "Invalid password";
/// How long a gateway waits for a venue's answer.
const FIX_TIMEOUT: Duration = Duration::from_secs(10);

/// How a gateway gets its host name.
#[derive(Clone, Copy)]
enum HostName {
    /// Its UTS namespace's hostname is `host` (what `gethostname` returns).
    Uts,
    /// Its UTS hostname is this, and `OTEL_RESOURCE_ATTRIBUTES=host.name=<host>` overrides it.
    ResourceAttribute { uts: &'static str },
}

/// What one gateway does: the ground truth.
#[derive(Clone, Copy)]
struct Plan {
    host: &'static str,
    lan_host: u8,
    naming: HostName,
    /// FIX sessions per accepting venue that log on and stay.
    held: [usize; ACCEPTING],
    /// FIX sessions per accepting venue that log on while watched, then log out (we first)
    /// and close.
    closed: [usize; ACCEPTING],
    /// Logons venue-c refuses: one TCP session each (the same CompIDs retrying), which the
    /// venue closes after its Logout.
    refused: usize,
    /// Connections to the unrelated listener (never counted).
    noise: usize,
}

impl Plan {
    /// TCP sessions open at the end (venue-c's all ended with their refusal).
    fn active(&self, t: usize) -> f64 {
        match t {
            REFUSING => 0.0,
            _ => self.held[t] as f64,
        }
    }
    fn opened(&self, t: usize) -> f64 {
        match t {
            REFUSING => self.refused as f64,
            _ => (self.held[t] + self.closed[t]) as f64,
        }
    }
    fn closes(&self, t: usize) -> f64 {
        match t {
            REFUSING => self.refused as f64,
            _ => self.closed[t] as f64,
        }
    }
    /// Logons completed: every session at an accepting venue logs on once.
    fn logons(&self, t: usize) -> f64 {
        match t {
            REFUSING => 0.0,
            _ => self.opened(t),
        }
    }
    fn refusals(&self, t: usize) -> f64 {
        match t {
            REFUSING => self.refused as f64,
            _ => 0.0,
        }
    }
    /// Logouts we sent first: one per closed session.
    fn logouts(&self, t: usize) -> f64 {
        match t {
            REFUSING => 0.0,
            _ => self.closes(t),
        }
    }
}

const PLANS: [Plan; 3] = [
    Plan {
        host: "gw-1",
        lan_host: 11,
        naming: HostName::Uts,
        held: [2, 1],
        closed: [1, 0],
        refused: 2,
        noise: 1,
    },
    Plan {
        host: "gw-2",
        lan_host: 12,
        naming: HostName::Uts,
        held: [4, 0],
        closed: [0, 0],
        refused: 0,
        noise: 2,
    },
    Plan {
        host: "gw-3",
        lan_host: 13,
        naming: HostName::ResourceAttribute {
            uts: "container-7f3a",
        },
        held: [1, 3],
        closed: [0, 2],
        refused: 1,
        noise: 0,
    },
];

/// One gateway: its namespace, its sidecar, and the sessions it holds.
struct Gateway {
    plan: Plan,
    ip: Ipv4Addr,
    /// Its FIX sessions that stay logged on.
    sessions: Vec<Peer>,
    /// Its connections to the unrelated listener.
    held: Vec<TcpStream>,
    sidecar: Sidecar,
    // Last: the namespace goes after the sidecar and the sockets in it.
    ns: NetNs,
}

impl Gateway {
    fn metrics_addr(&self) -> SocketAddr {
        SocketAddr::new(IpAddr::V4(self.ip), METRICS_PORT)
    }

    /// GET on this gateway's sidecar, from inside its namespace.
    fn get(&self, path: &str) -> (u16, String) {
        let addr = self.metrics_addr();
        self.ns.run(|| http_get(addr, path))
    }

    /// Opens `n` sessions from this gateway's address to `to`.
    fn connect(&self, n: usize, to: SocketAddr) -> Vec<TcpStream> {
        let local = format!("{}:0", self.ip);
        self.ns
            .run(|| (0..n).map(|_| connect_from(&local, to)).collect())
    }

    /// Its SenderCompID for session `k` with venue `t` (`FLEET-001-A1`): a CompID of its own
    /// for each session, as a gateway has with a venue.
    fn comp_id(&self, t: usize, k: usize) -> String {
        let venue = char::from(b'A' + t as u8);
        format!("{}-{venue}{k}", self.plan.host.to_uppercase())
    }

    /// `n` FIX sessions with accepting venue `t` at `to`, numbered from `first`, each logged
    /// on.
    fn log_on(&self, t: usize, first: usize, n: usize, to: SocketAddr) -> Vec<Peer> {
        let streams = self.connect(n, to);
        (streams.into_iter().enumerate())
            .map(|(k, s)| {
                let me = self.comp_id(t, first + k);
                let mut p = Peer::new(s, "FIX.4.4", &me, VENUE_COMP_IDS[t]);
                let answer = p.log_on(FIX_TIMEOUT);
                assert!(
                    matches!(answer, Ok(LogonAnswer::Accepted)),
                    "{me}: {answer:?}"
                );
                p
            })
            .collect()
    }

    /// Its logons to the refusing venue at `to`, one TCP session each, every one refused.
    fn refused_logons(&self, to: SocketAddr) {
        let me = self.comp_id(REFUSING, 1);
        for _ in 0..self.plan.refused {
            let s = self.connect(1, to).pop().unwrap();
            let mut p = Peer::new(s, "FIX.4.4", &me, VENUE_COMP_IDS[REFUSING]);
            let answer = p.log_on(FIX_TIMEOUT);
            assert!(
                matches!(&answer, Ok(LogonAnswer::Refused(t)) if t == REFUSAL),
                "{me}: {answer:?}"
            );
            p.close();
        }
    }

    /// Its sidecar follows FIX on the wire: the capture opened (root in its namespace).
    fn assert_capturing(&self) {
        let (code, body) = self.get("/sessions");
        let s: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert!(
            code == 200 && s["capture"] == true && s["capture_error"].is_null(),
            "{}: {body}",
            self.plan.host
        );
    }
}

/// `ip netns exec NS unshare --uts sh -c 'hostname H && exec fix-monitor "$@"'`, with the same
/// clean environment as `harness::command` (plus `OTEL_RESOURCE_ATTRIBUTES` for
/// [`HostName::ResourceAttribute`]).
fn sidecar_command(ns: &NetNs, plan: &Plan) -> Command {
    let uts = match plan.naming {
        HostName::Uts => plan.host,
        HostName::ResourceAttribute { uts } => uts,
    };
    let mut c = ns.command("unshare");
    c.args([
        "--uts",
        "sh",
        "-c",
        r#"hostname "$0" && exec "$@""#,
        uts,
        bin(),
    ]);
    for (k, _) in std::env::vars() {
        if k.starts_with("FIX_MONITOR_") || k.starts_with("DOWNSTREAM_") || k.starts_with("OTEL_") {
            c.env_remove(k);
        }
    }
    c.env("NO_COLOR", "1");
    die_with_parent(&mut c);
    if let HostName::ResourceAttribute { .. } = plan.naming {
        c.env(
            "OTEL_RESOURCE_ATTRIBUTES",
            format!("host.name={},deployment.environment=test", plan.host),
        );
    }
    c
}

/// How a metrics backend shows the fleet: which selector picks the sidecars' series and which
/// label carries the host.
struct View {
    name: &'static str,
    /// Inside `{...}`: picks this fleet's series.
    selector: &'static str,
    host_label: &'static str,
    /// Whether the backend scraped (then `up` exists) or was pushed to.
    scraped: bool,
}

const PROMETHEUS_VIEW: View = View {
    name: "prometheus",
    selector: r#"job="fix-monitor""#,
    host_label: "host",
    scraped: true,
};

/// `sum by (LABELS) (EXPR)` rows keyed by those labels' values, joined with `/`.
fn keyed(rows: Vec<Sample>, labels: &[&str]) -> BTreeMap<String, f64> {
    rows.into_iter()
        .map(|(l, v)| {
            let key: Vec<&str> = labels
                .iter()
                .map(|k| l.get(*k).map(String::as_str).unwrap_or("?"))
                .collect();
            (key.join("/"), v)
        })
        .collect()
}

/// One number per host and target in a back end, against the ground truth: the sum of
/// `series` (picked by the view's selector and `labels`), and what a [`Plan`] says it is at a
/// target (`None`: not checked there).
struct Count {
    series: &'static [&'static str],
    /// More label matchers, `""` for none.
    labels: &'static str,
    want: fn(&Plan, usize) -> Option<f64>,
    /// Also checked over the fleet: `sum()` and `sum by (target)`.
    fleet: bool,
}

impl Count {
    fn name(&self) -> String {
        let labels = match self.labels {
            "" => String::new(),
            l => format!("{{{l}}}"),
        };
        format!("{}{labels}", self.series.join(" + "))
    }
}

/// Whether a series may be absent where its value is 0: a histogram's before its first
/// observation, and the FIX sessions' (they exist for the sessions seen). The TCP layer's
/// counts and `fix_session_ends_total` start at 0 for every target.
fn may_be_absent(series: &str) -> bool {
    series.ends_with("_count")
        || (series.starts_with("fix_session_") && series != "fix_session_ends_total")
}

/// At the accepting venues only. At venue-c the peak, the lifetime histogram's count and the
/// short-lived count depend on whether a poll listed a refused session (it lives about a
/// millisecond): only the sum of the last two is exact there.
fn accepting(t: usize, v: f64) -> Option<f64> {
    (t != REFUSING).then_some(v)
}

/// What the fleet must show, per host and target: the TCP layer's counts, and the FIX layer's.
const COUNTS: &[Count] = &[
    Count {
        series: &["fix_connections_active"],
        labels: "",
        want: |p, t| Some(p.active(t)),
        fleet: true,
    },
    Count {
        series: &["fix_connections_total"],
        labels: "",
        want: |p, t| Some(p.opened(t)),
        fleet: true,
    },
    Count {
        series: &["fix_connections_closed_total"],
        labels: "",
        want: |p, t| Some(p.closes(t)),
        fleet: true,
    },
    Count {
        series: &["fix_connections_peak"],
        labels: "",
        want: |p, t| accepting(t, p.opened(t)),
        fleet: false,
    },
    Count {
        series: &["fix_connection_duration_seconds_count"],
        labels: "",
        want: |p, t| accepting(t, p.closes(t)),
        fleet: false,
    },
    Count {
        series: &["fix_connections_short_lived_total"],
        labels: "",
        want: |_, t| accepting(t, 0.0),
        fleet: false,
    },
    // Every close is either short-lived or has a lifetime.
    Count {
        series: &[
            "fix_connections_short_lived_total",
            "fix_connection_duration_seconds_count",
        ],
        labels: "",
        want: |p, t| Some(p.closes(t)),
        fleet: false,
    },
    // The FIX layer: logons, refusals, logouts, and why each session ended.
    Count {
        series: &["fix_session_logons_total"],
        labels: "",
        want: |p, t| Some(p.logons(t)),
        fleet: true,
    },
    Count {
        series: &["fix_session_logons_refused_total"],
        labels: "",
        want: |p, t| Some(p.refusals(t)),
        fleet: true,
    },
    Count {
        series: &["fix_session_logged_on"],
        labels: "",
        want: |p, t| Some(p.active(t)),
        fleet: false,
    },
    Count {
        series: &["fix_session_logouts_total"],
        labels: r#"initiator="us""#,
        want: |p, t| Some(p.logouts(t)),
        fleet: false,
    },
    Count {
        series: &["fix_session_logouts_total"],
        labels: r#"initiator="them""#,
        want: |_, _| Some(0.0),
        fleet: false,
    },
    Count {
        series: &["fix_session_ends_total"],
        labels: r#"cause="logon_refused""#,
        want: |p, t| Some(p.refusals(t)),
        fleet: true,
    },
    Count {
        series: &["fix_session_ends_total"],
        labels: r#"cause="logout_by_us""#,
        want: |p, t| Some(p.logouts(t)),
        fleet: true,
    },
    // One cause per end: no other cause counted anything.
    Count {
        series: &["fix_session_ends_total"],
        labels: "",
        want: |p, t| Some(p.closes(t)),
        fleet: true,
    },
];

/// `sum by (BY) (...)` of each of `c`'s series through `view`, keyed by BY's values and summed;
/// a series that may be absent counts 0 for each key of `want` it lacks.
fn observed(
    backend: &Backend,
    view: &View,
    c: &Count,
    by: &[&str],
    want: &BTreeMap<String, f64>,
) -> Result<BTreeMap<String, f64>, String> {
    let sel = match c.labels {
        "" => view.selector.to_string(),
        l => format!("{}, {l}", view.selector),
    };
    let mut sum = BTreeMap::new();
    for s in c.series {
        let rows = backend.try_query(&format!("sum by ({}) ({s}{{{sel}}})", by.join(", ")))?;
        let mut part = keyed(rows, by);
        if may_be_absent(s) {
            for k in want.keys() {
                part.entry(k.clone()).or_insert(0.0);
            }
        }
        for (k, v) in part {
            *sum.entry(k).or_insert(0.0) += v;
        }
    }
    Ok(sum)
}

/// `c` per host and target, and for a fleet count also per target and over the whole fleet.
fn check_count(
    backend: &Backend,
    view: &View,
    plans: &[Plan],
    c: &Count,
    problems: &mut Vec<String>,
) -> Result<(), String> {
    let name = c.name();
    let (mut want, mut unchecked) = (BTreeMap::new(), BTreeSet::new());
    let mut by_target: BTreeMap<String, f64> = BTreeMap::new();
    for p in plans {
        for (t, target) in TARGETS.iter().enumerate() {
            let key = format!("{}/{target}", p.host);
            match (c.want)(p, t) {
                Some(v) => {
                    want.insert(key, v);
                    *by_target.entry(target.to_string()).or_insert(0.0) += v;
                }
                None => {
                    unchecked.insert(key);
                }
            }
        }
    }
    let mut got = observed(backend, view, c, &[view.host_label, "target"], &want)?;
    got.retain(|k, _| !unchecked.contains(k));
    if got != want {
        problems.push(format!(
            "{name} by host/target: got {got:?}\n    want {want:?}"
        ));
    }
    if !c.fleet {
        return Ok(());
    }
    let got = observed(backend, view, c, &["target"], &by_target)?;
    if got != by_target {
        problems.push(format!(
            "sum by (target) ({name}): got {got:?}, want {by_target:?}"
        ));
    }
    let all: BTreeMap<String, f64> = [(String::new(), by_target.values().sum())].into();
    let got = observed(backend, view, c, &[], &all)?;
    if got != all {
        problems.push(format!("sum({name}): got {got:?}, want {all:?}"));
    }
    Ok(())
}

/// Compares everything the fleet should show in `backend` through `view`: [`COUNTS`] per host
/// and target and over the fleet, who hung up, the hosts, the host-to-instance mapping
/// (scraped backends), and the dashboard's "targets without a connection". Returns
/// `Err(diff)` instead of panicking, for bounded waits.
fn check_fleet(backend: &Backend, view: &View, gateways: &[Gateway]) -> Result<(), String> {
    let plans: Vec<Plan> = gateways.iter().map(|g| g.plan).collect();
    let sel = view.selector;
    let host = view.host_label;
    let q = |promql: String| backend.try_query(&promql);
    let mut problems = Vec::new();
    for c in COUNTS {
        check_count(backend, view, &plans, c, &mut problems)?;
    }
    let every = |f: fn(&Plan, usize) -> f64| -> Vec<f64> {
        (plans.iter())
            .flat_map(|p| (0..TARGETS.len()).map(move |t| f(p, t)))
            .collect()
    };

    // Who hung up: the gateways poll, which never knows, so every close is `by="unknown"`.
    let got = keyed(
        q(format!(
            "sum by (by) (fix_connections_closed_total{{{sel}}})"
        ))?,
        &["by"],
    );
    let closes: f64 = every(Plan::closes).iter().sum();
    let want: BTreeMap<String, f64> = [("unknown".to_string(), closes)].into();
    if got != want {
        problems.push(format!(
            "sum by (by) (fix_connections_closed_total): got {got:?}, want {want:?}"
        ));
    }

    // Hosts: each once, with a series per target.
    let hosts = keyed(
        q(format!(
            "count by ({host}) (fix_connections_active{{{sel}}})"
        ))?,
        &[host],
    );
    let want_hosts: BTreeMap<String, f64> = (plans.iter())
        .map(|p| (p.host.to_string(), TARGETS.len() as f64))
        .collect();
    if hosts != want_hosts {
        problems.push(format!(
            "series per host: got {hosts:?}, want {want_hosts:?}"
        ));
    }

    // The dashboard's "Targets without a connection" (venue-c's everywhere).
    let idle_want = every(Plan::active).iter().filter(|n| **n == 0.0).count() as f64;
    let idle = q(format!(
        "count(max by ({host}, target) (fix_connections_active{{{sel}}}) == 0) or vector(0)"
    ))?;
    if idle.len() != 1 || idle[0].1 != idle_want {
        problems.push(format!(
            "targets without a connection: got {idle:?}, want {idle_want}"
        ));
    }
    if view.scraped {
        check_instances(backend, view, gateways, &mut problems)?;
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(format!("[{}]\n  {}", view.name, problems.join("\n  ")))
    }
}

/// A scraped back end: every sidecar up, and each instance (gateway address) carries its own
/// host (the accepting venues' peak: venue-c's is not exact, see [`accepting`]).
fn check_instances(
    backend: &Backend,
    view: &View,
    gateways: &[Gateway],
    problems: &mut Vec<String>,
) -> Result<(), String> {
    let (sel, host) = (view.selector, view.host_label);
    let up = keyed(backend.try_query(&format!("up{{{sel}}}"))?, &["instance"]);
    let want_up: BTreeMap<String, f64> = gateways
        .iter()
        .map(|g| (g.metrics_addr().to_string(), 1.0))
        .collect();
    if up != want_up {
        problems.push(format!("up: got {up:?}, want {want_up:?}"));
    }
    let refusing = TARGETS[REFUSING];
    let owner = keyed(
        backend.try_query(&format!(
            "max by (instance, {host}) (fix_connections_peak{{{sel}, target!=\"{refusing}\"}})"
        ))?,
        &["instance", host],
    );
    let mut want_owner = BTreeMap::new();
    for g in gateways {
        let peak = (0..ACCEPTING).map(|t| g.plan.opened(t)).fold(0.0, f64::max);
        want_owner.insert(format!("{}/{}", g.metrics_addr(), g.plan.host), peak);
    }
    if owner != want_owner {
        problems.push(format!("instance/host: got {owner:?}, want {want_owner:?}"));
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// OTLP WIRE-IN. The same three sidecars also push OTLP/HTTP into one VictoriaMetrics in the
// downstream namespace, and `check_fleet` runs against it too (same numbers, other labels).
// The pieces:
//   - `otlp_sink` starts VictoriaMetrics in `ds` (listening on 0.0.0.0 there, so the gateways
//     reach it at http://10.200.0.1:PORT) with -opentelemetry.usePrometheusNaming;
//   - `otlp_args` / `otlp_env` make each sidecar push there every second;
//   - `VICTORIA_METRICS_VIEW` is how VictoriaMetrics labels pushed series: with Prometheus
//     naming on, the metric names are the same as on /metrics (fix_connections_total, ...),
//     the resource attributes become labels (service_name, host_name, service_instance_id,
//     ...), and there is no `job`, `instance`, `host` or `up`. (Checked by hand against the
//     in-progress OTLP exporter pushing into trixie's VictoriaMetrics 1.112.)
// ---------------------------------------------------------------------------------------------

const VICTORIA_METRICS_VIEW: View = View {
    name: "victoria-metrics (OTLP)",
    selector: r#"service_name="fix-monitor""#,
    host_label: "host_name",
    scraped: false,
};

/// The VictoriaMetrics the sidecars push to.
fn otlp_sink(ds: &NetNs) -> Option<Backend> {
    Some(Backend::victoria_metrics(
        Some(ds),
        &["-opentelemetry.usePrometheusNaming"],
    ))
}

/// `fix-monitor run` arguments that make a sidecar push to `sink`: VictoriaMetrics takes
/// OTLP/HTTP (protobuf) only, at `/opentelemetry/v1/metrics`; fix-monitor appends
/// `/v1/metrics` to the base URL for http/protobuf.
fn otlp_args(sink: Option<&Backend>, ds_ip: Ipv4Addr) -> Vec<String> {
    let Some(vm) = sink else {
        return Vec::new();
    };
    vec![
        "--otlp-endpoint".into(),
        format!("{}/opentelemetry", vm.url_at(IpAddr::V4(ds_ip))),
        "--otlp-protocol".into(),
        "http/protobuf".into(),
    ]
}

/// Environment for the same: export every second (there is no flag for the interval).
fn otlp_env(sink: Option<&Backend>) -> Vec<(&'static str, &'static str)> {
    match sink {
        Some(_) => vec![("FIX_MONITOR_OTLP__INTERVAL", "1s")],
        None => Vec::new(),
    }
}

/// The downstream side: venue-a, venue-b and venue-c (simulated FIX venues, threads of the test
/// in the downstream namespace; venue-c refuses every logon) and an unrelated service on the
/// downstream address, and the config every gateway's sidecar reads (the three venues as
/// targets, FIX read off the wire).
struct Downstreams {
    venues: [SocketAddr; 3],
    other: SocketAddr,
    cfg: tempfile::NamedTempFile,
    fix_venues: [Venue; 3],
    _other: Downstream,
}

impl Downstreams {
    fn listen(ds: &NetNs, ds_ip: Ipv4Addr) -> Downstreams {
        let fix_venues: [Venue; 3] = ds.run(|| {
            std::array::from_fn(|t| {
                let b = VenueBehaviour {
                    comp_id: VENUE_COMP_IDS[t].into(),
                    refuse_logons: (t == REFUSING).then(|| REFUSAL.to_string()),
                    ..VenueBehaviour::default()
                };
                Venue::start(SocketAddr::new(IpAddr::V4(ds_ip), 0), b).unwrap()
            })
        });
        let other = ds.run(|| Downstream::listen(&format!("{ds_ip}:0")));
        let venues = fix_venues.each_ref().map(|v| v.addr);
        let mut cfg = String::new();
        for (name, addr) in TARGETS.iter().zip(venues) {
            let port = addr.port();
            cfg += &format!(
                "[[targets]]\nname = \"{name}\"\naddress = \"{ds_ip}\"\nport = {port}\n\n"
            );
        }
        cfg += "[fix]\ncapture = true\n";
        Downstreams {
            venues,
            other: other.addr,
            cfg: config_file(&cfg),
            fix_venues,
            _other: other,
        }
    }

    /// Stops the venues, once the gateways are gone, and checks what they did against the
    /// plans: each accepting venue answered every logon and logout, venue-c refused every logon
    /// and accepted none.
    fn stop(self, plans: &[Plan]) {
        let records: Vec<VenueRecord> = self.fix_venues.into_iter().map(Venue::stop).collect();
        for (t, r) in records.iter().enumerate() {
            let total =
                |f: fn(&Plan, usize) -> f64| plans.iter().map(|p| f(p, t)).sum::<f64>() as u64;
            let n = |c: &Counts, k: &str| c.get(k).copied().unwrap_or(0);
            let got = (
                r.connections,
                n(&r.received, "Logon"),
                n(&r.sent, "Logon"),
                n(&r.received, "Logout"),
                n(&r.sent, "Logout"),
            );
            let logouts = total(Plan::logouts);
            let want = (
                total(Plan::opened),
                total(Plan::opened),
                total(Plan::logons),
                logouts,
                logouts + total(Plan::refusals),
            );
            assert_eq!(
                got, want,
                "{}: (connections, Logons in, out, Logouts in, out)",
                TARGETS[t]
            );
        }
    }
}

/// A gateway namespace for `plan` on `lan`, with its sidecar (netlink every `interval`,
/// listening on the LAN, pushing to `sink` if any).
fn start_gateway(
    lan: &mut Lan<'_>,
    plan: &Plan,
    cfg: &Path,
    sink: Option<&Backend>,
    interval: &str,
) -> Gateway {
    let ns = NetNs::create(&format!("gw{}", plan.lan_host));
    let ip = lan.attach(&ns, plan.lan_host);
    let ds_ip = lan.addr(DS_HOST);
    let listen = format!("0.0.0.0:{METRICS_PORT}");
    let mut args: Vec<String> = [
        "--config",
        cfg.to_str().unwrap(),
        // Netlink: the closes expected are `by = "unknown"` (eBPF mode says who hung up).
        "--source",
        "netlink",
        "--interval",
        interval,
        "--listen",
        &listen,
    ]
    .map(String::from)
    .to_vec();
    args.extend(otlp_args(sink, ds_ip));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut cmd = sidecar_command(&ns, plan);
    cmd.envs(otlp_env(sink));
    let sidecar = Sidecar::start_with(cmd, &args);
    Gateway {
        plan: *plan,
        ip,
        sessions: Vec::new(),
        held: Vec::new(),
        sidecar,
        ns,
    }
}

/// Every gateway opens its plan's sessions: FIX sessions logged on at the accepting venues, the
/// held ones and unrelated noise staying with it; once every sidecar has seen them, the short
/// ones log out (we first) and close, and then each gateway makes its refused logons at
/// venue-c (nothing checks lifetimes, only that each close is counted and judged once).
fn open_sessions(gateways: &mut [Gateway], d: &Downstreams) {
    let mut short = Vec::new();
    for g in gateways.iter_mut() {
        let p = g.plan;
        for (t, venue) in d.venues.iter().take(ACCEPTING).enumerate() {
            let held = g.log_on(t, 1, p.held[t], *venue);
            g.sessions.extend(held);
            short.extend(g.log_on(t, 1 + p.held[t], p.closed[t], *venue));
        }
        let noise = g.connect(p.noise, d.other);
        g.held.extend(noise);
    }
    for g in gateways.iter() {
        let want: f64 = (0..ACCEPTING).map(|t| g.plan.opened(t)).sum();
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let (_, body) = g.get("/health");
            let h: serde_json::Value = serde_json::from_str(&body).unwrap();
            let active = h["active_connections"].as_f64().unwrap_or(-1.0);
            if active == want {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{}: /health says {active} active, want {want}: {body}",
                g.plan.host
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    for mut s in short {
        let logout = s.log_out("end of day", FIX_TIMEOUT);
        assert!(logout.is_ok(), "{}: {logout:?}", s.sender);
        s.close();
    }
    for g in gateways.iter() {
        g.refused_logons(d.venues[REFUSING]);
    }
}

/// Orderly teardown, sidecars first (Drop would do the same on a panic).
fn tear_down(gateways: Vec<Gateway>) {
    for g in gateways {
        let Gateway {
            sidecar,
            sessions,
            held,
            ns,
            ..
        } = g;
        drop(sidecar);
        drop((sessions, held));
        drop(ns);
    }
}

/// Every host's series carry its own name, target_info included (gw-3: the resource attribute
/// beat the UTS hostname).
fn check_host_names(prom: &Backend) {
    let info = prom.query(&format!(r#"target_info{{job="{JOB}"}}"#));
    let mut info_hosts: Vec<(String, String)> = info
        .iter()
        .map(|(l, _)| (l["host"].clone(), l["host_name"].clone()))
        .collect();
    info_hosts.sort();
    assert_eq!(
        info_hosts,
        PLANS
            .iter()
            .map(|p| (p.host.to_string(), p.host.to_string()))
            .collect::<Vec<_>>()
    );
    let gw3 = prom.query(r#"target_info{host="gw-3"}"#);
    assert_eq!(
        gw3[0].0.get("deployment_environment").map(String::as_str),
        Some("test")
    );
    assert!(
        prom.query(r#"{__name__=~"fix_.*", host="container-7f3a"}"#)
            .is_empty(),
        "the UTS hostname must not appear when host.name is set"
    );
}

/// Three gateways in their own namespaces, one downstream + Prometheus namespace: per-host
/// values under distinct `host` labels, and fleet-wide sums.
#[test]
fn fleet_of_three_gateways_scraped_by_one_prometheus() {
    let started = Instant::now();
    let ds = NetNs::create("ds");
    let mut lan = Lan::new(&ds, LAN, DS_HOST);
    let ds_ip = lan.addr(DS_HOST);
    // The venues and an unrelated service, all on the downstream address.
    let downstream = Downstreams::listen(&ds, ds_ip);
    let otlp = otlp_sink(&ds);

    // Gateways: namespace, LAN address, and a sidecar with its own hostname.
    let mut gateways: Vec<Gateway> = PLANS
        .iter()
        .map(|plan| {
            start_gateway(
                &mut lan,
                plan,
                downstream.cfg.path(),
                otlp.as_ref(),
                "200ms",
            )
        })
        .collect();

    // Each sidecar names its own host, and is reachable over the LAN from the downstream side.
    for g in &gateways {
        let (code, body) = g.get("/health");
        assert_eq!(code, 200, "{}: {body}\n{}", g.plan.host, g.sidecar.log());
        let health: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(health["hostname"], g.plan.host, "{body}");
        g.assert_capturing();
        let addr = g.metrics_addr();
        let (code, _) = ds.run(|| http_get(addr, "/metrics"));
        assert_eq!(
            code, 200,
            "{} not reachable from the downstream namespace",
            g.plan.host
        );
    }

    let prom = Backend::prometheus(
        Some(&ds),
        &scrape_config(
            JOB,
            &gateways
                .iter()
                .map(Gateway::metrics_addr)
                .collect::<Vec<_>>(),
        ),
    );
    prom.wait_for("all three sidecars up", Duration::from_secs(30), |p| {
        let up = p.try_query(&format!(r#"sum(up{{job="{JOB}"}})"#))?;
        match up.first() {
            Some((_, v)) if *v == 3.0 => Ok(()),
            _ => Err(format!("up: {up:?}")),
        }
    });

    // The sessions: FIX sessions held, unrelated noise, short ones logged out once seen, and
    // refused logons.
    open_sessions(&mut gateways, &downstream);

    prom.wait_for(
        "the fleet's numbers in Prometheus",
        Duration::from_secs(30),
        |p| check_fleet(p, &PROMETHEUS_VIEW, &gateways),
    );

    check_host_names(&prom);

    if let Some(vm) = &otlp {
        vm.force_flush();
        vm.wait_for(
            "the fleet's numbers in VictoriaMetrics",
            Duration::from_secs(30),
            |v| {
                v.force_flush();
                check_fleet(v, &VICTORIA_METRICS_VIEW, &gateways)
            },
        );
    }

    tear_down(gateways);
    drop(prom);
    drop(otlp);
    downstream.stop(&PLANS);
    drop(ds);
    println!(
        "fleet_of_three_gateways_scraped_by_one_prometheus: {:.1}s",
        started.elapsed().as_secs_f64()
    );
}

// ---------------------------------------------------------------------------------------------
// A FLEET OF FIFTY (FLEET_SIZE overrides; scripts/fleet.sh runs it and prints the cost). The
// same pieces at fleet scale: generated gateways with known FIX sessions (held, logged out,
// refused) and unrelated connections, every sidecar capturing FIX, Prometheus configured from
// the fleet example (examples/prometheus.yml, its file_sd_configs pointed at a targets file the
// test writes, as a deployment tool would), and every sidecar pushing OTLP to one
// VictoriaMetrics. Then what the fleet costs the back end, measured.

/// How many sidecars: `FLEET_SIZE`, else 50 (at most 200: LAN hosts 20..=219).
fn fleet_size() -> usize {
    let n = std::env::var("FLEET_SIZE")
        .ok()
        .map(|s| s.parse().expect("FLEET_SIZE is a number"))
        .unwrap_or(50);
    assert!((1..=200).contains(&n), "FLEET_SIZE must be 1 to 200");
    n
}

/// Gateway `i`'s plan: a spread of held, closed, refused and unrelated sessions, some targets
/// idle.
fn generated_plan(i: usize) -> Plan {
    Plan {
        host: Box::leak(format!("fleet-{:03}", i + 1).into_boxed_str()),
        lan_host: 20 + i as u8,
        naming: HostName::Uts,
        held: [i % 4, (i * 3) % 5],
        closed: [i % 3, (i / 2) % 2],
        refused: (i * 2) % 3,
        noise: i % 2,
    }
}

/// examples/prometheus.yml made a test's: every second, no static sites, its file_sd_configs
/// reading `targets_glob`, no self-scrape (this Prometheus listens elsewhere).
fn fleet_prometheus_config(targets_glob: &str) -> String {
    use serde_norway::Value;
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/prometheus.yml");
    let mut cfg: Value = serde_norway::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    for key in ["scrape_interval", "scrape_timeout", "evaluation_interval"] {
        cfg["global"][key] = Value::from("1s");
    }
    let Value::Sequence(jobs) = &mut cfg["scrape_configs"] else {
        panic!("examples/prometheus.yml: no scrape_configs");
    };
    jobs.retain(|j| j["job_name"] == JOB);
    let job = &mut jobs[0];
    job["scrape_interval"] = Value::from("1s");
    job.as_mapping_mut().unwrap().remove("static_configs");
    job["file_sd_configs"][0]["files"] = Value::Sequence(vec![Value::from(targets_glob)]);
    job["file_sd_configs"][0]["refresh_interval"] = Value::from("5s");
    serde_norway::to_string(&cfg).unwrap()
}

/// The sum of the samples of `name` in a Prometheus text body (any labels).
fn text_sum(body: &str, name: &str) -> f64 {
    body.lines()
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|r| r.starts_with('{') || r.starts_with(' '))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// What the fleet costs the back ends over `window`: Prometheus scraping every second, and
/// VictoriaMetrics taking every sidecar's push every second.
fn fleet_cost(prom: &Backend, vm: &Backend, n: usize, window: Duration) -> String {
    let scraped = prom
        .value(&format!("sum(scrape_samples_scraped{{job=\"{JOB}\"}})"))
        .unwrap();
    let (lo, hi) = (
        prom.value(&format!("min(scrape_samples_scraped{{job=\"{JOB}\"}})"))
            .unwrap(),
        prom.value(&format!("max(scrape_samples_scraped{{job=\"{JOB}\"}})"))
            .unwrap(),
    );
    let vm_counts = || {
        let (_, body) = vm.request("GET", "/metrics", None).unwrap();
        (
            text_sum(&body, "vm_rows_inserted_total{type=\"opentelemetry\"}"),
            text_sum(&body, "vm_tcplistener_read_bytes_total"),
        )
    };
    let (rows0, bytes0) = vm_counts();
    let started = Instant::now();
    std::thread::sleep(window);
    let (rows1, bytes1) = vm_counts();
    let secs = started.elapsed().as_secs_f64();
    let rows_per_s = (rows1 - rows0) / secs;
    let rss = |b: &Backend| {
        let (_, body) = b.request("GET", "/metrics", None).unwrap();
        text_sum(&body, "process_resident_memory_bytes") / (1 << 20) as f64
    };
    format!(
        "fleet of {n}: {:.0} series per sidecar ({lo:.0} to {hi:.0}); Prometheus: {scraped:.0} \
         samples per 1 s scrape round ({:.0} samples/s), {:.0} MiB resident; VictoriaMetrics \
         (OTLP/HTTP, every 1 s): {rows_per_s:.0} samples/s, {:.0} bytes per sample pushed \
         (HTTP included, over {secs:.0} s), {:.0} MiB resident",
        scraped / n as f64,
        scraped,
        rss(prom),
        (bytes1 - bytes0) / (rows1 - rows0).max(1.0),
        rss(vm),
    )
}

#[test]
fn fleet_of_fifty_sidecars_adds_up_in_prometheus_and_victoria_metrics() {
    let started = Instant::now();
    let n = fleet_size();
    let plans: Vec<Plan> = (0..n).map(generated_plan).collect();
    let ds = NetNs::create("ds");
    let mut lan = Lan::new(&ds, LAN, DS_HOST);
    let downstream = Downstreams::listen(&ds, lan.addr(DS_HOST));
    let vm = otlp_sink(&ds).unwrap();
    let mut gateways: Vec<Gateway> = plans
        .iter()
        .map(|plan| start_gateway(&mut lan, plan, downstream.cfg.path(), Some(&vm), "500ms"))
        .collect();

    // Prometheus from the fleet example, finding the sidecars through a targets file.
    let sd = tempfile::tempdir().unwrap();
    let listed: Vec<String> = gateways
        .iter()
        .map(|g| g.metrics_addr().to_string())
        .collect();
    let sd_file =
        serde_json::json!([{"targets": listed, "labels": {"site": "fleet", "env": "test"}}]);
    std::fs::write(sd.path().join("fleet.json"), sd_file.to_string()).unwrap();
    let glob = sd.path().join("*.json").display().to_string();
    let prom = Backend::prometheus(Some(&ds), &fleet_prometheus_config(&glob));
    prom.wait_for("every sidecar up", Duration::from_secs(60), |p| {
        let up = p.try_query(&format!(r#"sum by (site, env) (up{{job="{JOB}"}})"#))?;
        match up.as_slice() {
            [(l, v)] if *v == n as f64 && l["site"] == "fleet" && l["env"] == "test" => Ok(()),
            _ => Err(format!("up: {up:?}")),
        }
    });

    // The sessions, as in the fleet of three.
    for g in &gateways {
        g.assert_capturing();
    }
    open_sessions(&mut gateways, &downstream);

    prom.wait_for(
        "the fleet's numbers in Prometheus",
        Duration::from_secs(60),
        |p| check_fleet(p, &PROMETHEUS_VIEW, &gateways),
    );
    vm.wait_for(
        "the fleet's numbers in VictoriaMetrics",
        Duration::from_secs(60),
        |v| {
            v.force_flush();
            check_fleet(v, &VICTORIA_METRICS_VIEW, &gateways)
        },
    );
    // No series lost or doubled: the same series count per sidecar in both back ends, the TCP
    // layer's and the FIX sessions'.
    let per_host = |b: &Backend, host: &str, sel: &str| {
        keyed(
            b.query(&format!(
                "count by ({host}) ({{__name__=~\"fix_connections.*|fix_session.*\", {sel}}})"
            )),
            &[host],
        )
    };
    let scraped = per_host(&prom, "host", PROMETHEUS_VIEW.selector);
    let pushed = per_host(&vm, "host_name", VICTORIA_METRICS_VIEW.selector);
    assert_eq!(scraped.len(), n, "{scraped:?}");
    assert_eq!(scraped, pushed, "series per host, scraped vs pushed");

    let cost = fleet_cost(&prom, &vm, n, Duration::from_secs(20));
    println!("{cost}");

    tear_down(gateways);
    drop((prom, vm));
    downstream.stop(&plans);
    drop(ds);
    println!(
        "fleet_of_fifty_sidecars_adds_up_in_prometheus_and_victoria_metrics ({n}): {:.1}s",
        started.elapsed().as_secs_f64()
    );
}
