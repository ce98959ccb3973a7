//! A fleet: three FIX gateways, each in its own network namespace with its own fix-monitor and
//! its own hostname, connected over a bridge to one downstream namespace that holds the venue
//! listeners and one Prometheus scraping all three sidecars. Each gateway opens (and closes) a
//! different, known number of sessions; Prometheus must have each host's numbers under its own
//! `host` label, and the fleet-wide sums.
//!
//! ```text
//!   ns gw1 (hostname gw-1)      ns gw2 (hostname gw-2)      ns gw3 (uts "container-7f3a",
//!   10.200.0.11 fix-monitor     10.200.0.12 fix-monitor      OTEL host.name=gw-3) 10.200.0.13
//!        |  :9464                    |  :9464                    |  :9464
//!        +---------- veth ------- br0 10.200.0.1 ------ veth ----+
//!                          ns ds: venue-a, venue-b, other listeners; Prometheus
//! ```
//! 10.200.0.0/24 exists only inside these namespaces, which the test creates and deletes.
//!
//! Sidecars are started as an operator would: `ip netns exec NS unshare --uts sh -c 'hostname
//! NAME && exec fix-monitor run --config FILE --listen 0.0.0.0:9464 ...'`. The `host` label
//! comes from `gethostname(2)` unless `OTEL_RESOURCE_ATTRIBUTES` sets `host.name`: gw-1 and gw-2
//! use the first way, gw-3 the second (its UTS hostname is something else, and must lose).
//!
//! OTLP: see the "OTLP WIRE-IN" section below: the same three sidecars are to push into one
//! VictoriaMetrics, and the same checks then run against it.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use crate::backends::{die_with_parent, scrape_config, Backend, Sample};
use crate::harness::{bin, config_file, connect_from, http_get, Downstream, Sidecar};
use crate::netns::{Lan, NetNs};

const LAN: [u8; 3] = [10, 200, 0];
const DS_HOST: u8 = 1;
const METRICS_PORT: u16 = 9464;
const JOB: &str = "fix-monitor";
const TARGETS: [&str; 2] = ["venue-a", "venue-b"];

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
    /// Sessions per target that stay open.
    held: [usize; 2],
    /// Sessions per target that are opened while watched and then closed.
    closed: [usize; 2],
    /// Connections to the unrelated listener (never counted).
    noise: usize,
}

impl Plan {
    fn active(&self, t: usize) -> f64 {
        self.held[t] as f64
    }
    fn opened(&self, t: usize) -> f64 {
        (self.held[t] + self.closed[t]) as f64
    }
    fn closes(&self, t: usize) -> f64 {
        self.closed[t] as f64
    }
}

const PLANS: [Plan; 3] = [
    Plan {
        host: "gw-1",
        lan_host: 11,
        naming: HostName::Uts,
        held: [2, 1],
        closed: [1, 0],
        noise: 1,
    },
    Plan {
        host: "gw-2",
        lan_host: 12,
        naming: HostName::Uts,
        held: [4, 0],
        closed: [0, 0],
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
        noise: 0,
    },
];

/// One gateway: its namespace, its sidecar, and the sessions it holds.
struct Gateway {
    plan: Plan,
    ip: Ipv4Addr,
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

/// One count per gateway and target, derived from a [`Plan`].
type PerTarget = fn(&Plan, usize) -> f64;

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

/// The per-host and fleet-wide numbers that `plans` imply, as `metric -> key -> value`, with
/// keys `host/target` (and `*` for fleet sums).
fn expected(plans: &[Plan]) -> BTreeMap<&'static str, BTreeMap<String, f64>> {
    let mut out: BTreeMap<&'static str, BTreeMap<String, f64>> = BTreeMap::new();
    let metrics: [(&'static str, PerTarget); 5] = [
        ("fix_connections_active", Plan::active),
        ("fix_connections_total", Plan::opened),
        ("fix_connections_closed_total", Plan::closes),
        ("fix_connections_peak", Plan::opened),
        ("fix_connection_duration_seconds_count", Plan::closes),
    ];
    for (metric, f) in metrics {
        let m = out.entry(metric).or_default();
        for p in plans {
            for (t, name) in TARGETS.iter().enumerate() {
                m.insert(format!("{}/{name}", p.host), f(p, t));
            }
        }
    }
    out
}

/// Compares everything the fleet should show in `backend` through `view`: per host and target,
/// fleet-wide sums, host-to-instance mapping (scraped backends), and the dashboard's "targets
/// without a connection". Returns `Err(diff)` instead of panicking, for bounded waits.
fn check_fleet(backend: &Backend, view: &View, gateways: &[Gateway]) -> Result<(), String> {
    let plans: Vec<Plan> = gateways.iter().map(|g| g.plan).collect();
    let sel = view.selector;
    let host = view.host_label;
    let q = |promql: String| backend.try_query(&promql);
    let mut problems = Vec::new();

    // Per host and target. Histogram counts only exist once something closed: missing = 0.
    for (metric, want) in expected(&plans) {
        let rows = q(format!("sum by ({host}, target) ({metric}{{{sel}}})"))?;
        let mut got = keyed(rows, &[host, "target"]);
        if metric.ends_with("_count") {
            for k in want.keys() {
                got.entry(k.clone()).or_insert(0.0);
            }
        }
        if got != want {
            problems.push(format!(
                "{metric} by host/target: got {got:?}\n    want {want:?}"
            ));
        }
    }

    // Fleet-wide: sum() over all hosts, and by target.
    let total = |f: PerTarget, t: Option<usize>| -> f64 {
        plans
            .iter()
            .flat_map(|p| {
                (0..2)
                    .filter(move |i| t.is_none_or(|t| t == *i))
                    .map(move |i| f(p, i))
            })
            .sum()
    };
    for (metric, f) in [
        (
            "fix_connections_active",
            Plan::active as fn(&Plan, usize) -> f64,
        ),
        ("fix_connections_total", Plan::opened),
        ("fix_connections_closed_total", Plan::closes),
    ] {
        let got = q(format!("sum({metric}{{{sel}}})"))?;
        let want = total(f, None);
        if got.len() != 1 || got[0].1 != want {
            problems.push(format!("sum({metric}): got {got:?}, want {want}"));
        }
        let got = keyed(
            q(format!("sum by (target) ({metric}{{{sel}}})"))?,
            &["target"],
        );
        let want: BTreeMap<String, f64> = TARGETS
            .iter()
            .enumerate()
            .map(|(i, t)| (t.to_string(), total(f, Some(i))))
            .collect();
        if got != want {
            problems.push(format!(
                "sum by (target) ({metric}): got {got:?}, want {want:?}"
            ));
        }
    }

    // Who hung up: the gateways poll, which never knows, so every close is `by="unknown"`.
    let got = keyed(
        q(format!(
            "sum by (by) (fix_connections_closed_total{{{sel}}})"
        ))?,
        &["by"],
    );
    let want: BTreeMap<String, f64> = [("unknown".to_string(), total(Plan::closes, None))].into();
    if got != want {
        problems.push(format!(
            "sum by (by) (fix_connections_closed_total): got {got:?}, want {want:?}"
        ));
    }

    // Hosts: exactly the three, each once.
    let hosts = keyed(
        q(format!(
            "count by ({host}) (fix_connections_active{{{sel}}})"
        ))?,
        &[host],
    );
    let want_hosts: BTreeMap<String, f64> =
        plans.iter().map(|p| (p.host.to_string(), 2.0)).collect();
    if hosts != want_hosts {
        problems.push(format!(
            "series per host: got {hosts:?}, want {want_hosts:?}"
        ));
    }

    // The dashboard's "Targets without a connection": gw-2 has no venue-b session.
    let idle_want = plans
        .iter()
        .flat_map(|p| p.held.iter())
        .filter(|n| **n == 0)
        .count() as f64;
    let idle = q(format!(
        "count(max by ({host}, target) (fix_connections_active{{{sel}}}) == 0) or vector(0)"
    ))?;
    if idle.len() != 1 || idle[0].1 != idle_want {
        problems.push(format!(
            "targets without a connection: got {idle:?}, want {idle_want}"
        ));
    }

    if view.scraped {
        // Every sidecar scraped, and each instance (gateway address) carries its own host.
        let up = keyed(q(format!("up{{{sel}}}"))?, &["instance"]);
        let want_up: BTreeMap<String, f64> = gateways
            .iter()
            .map(|g| (g.metrics_addr().to_string(), 1.0))
            .collect();
        if up != want_up {
            problems.push(format!("up: got {up:?}, want {want_up:?}"));
        }
        let owner = keyed(
            q(format!(
                "max by (instance, {host}) (fix_connections_peak{{{sel}}})"
            ))?,
            &["instance", host],
        );
        let mut want_owner = BTreeMap::new();
        for g in gateways {
            let peak = (0..2).map(|t| g.plan.opened(t)).fold(0.0, f64::max);
            want_owner.insert(format!("{}/{}", g.metrics_addr(), g.plan.host), peak);
        }
        if owner != want_owner {
            problems.push(format!("instance/host: got {owner:?}, want {want_owner:?}"));
        }
    }

    if problems.is_empty() {
        Ok(())
    } else {
        Err(format!("[{}]\n  {}", view.name, problems.join("\n  ")))
    }
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

/// The downstream side: venue-a, venue-b and an unrelated service on the downstream address,
/// and the config every gateway's sidecar reads (the two venues as targets).
struct Downstreams {
    venues: [SocketAddr; 2],
    other: SocketAddr,
    cfg: tempfile::NamedTempFile,
    _listeners: [Downstream; 3],
}

impl Downstreams {
    fn listen(ds: &NetNs, ds_ip: Ipv4Addr) -> Downstreams {
        let listeners: [Downstream; 3] =
            ds.run(|| std::array::from_fn(|_| Downstream::listen(&format!("{ds_ip}:0"))));
        let venues = [listeners[0].addr, listeners[1].addr];
        let cfg = config_file(&format!(
            "[[targets]]\nname = \"venue-a\"\naddress = \"{ds_ip}\"\nport = {}\n\n\
             [[targets]]\nname = \"venue-b\"\naddress = \"{ds_ip}\"\nport = {}\n",
            venues[0].port(),
            venues[1].port()
        ));
        Downstreams {
            venues,
            other: listeners[2].addr,
            cfg,
            _listeners: listeners,
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
        held: Vec::new(),
        sidecar,
        ns,
    }
}

/// Every gateway opens its plan's sessions: held ones and unrelated noise stay with it, the
/// short ones are closed once every sidecar has seen them (nothing checks their lifetimes,
/// only that each close is counted and observed once).
fn open_sessions(gateways: &mut [Gateway], d: &Downstreams) {
    let mut short = Vec::new();
    for g in gateways.iter_mut() {
        let p = g.plan;
        for (t, venue) in d.venues.iter().enumerate() {
            let held = g.connect(p.held[t], *venue);
            g.held.extend(held);
            short.extend(g.connect(p.closed[t], *venue));
        }
        let noise = g.connect(p.noise, d.other);
        g.held.extend(noise);
    }
    for g in gateways.iter() {
        let want: f64 = (0..2).map(|t| g.plan.opened(t)).sum();
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
    drop(short);
}

/// Orderly teardown, sidecars first (Drop would do the same on a panic).
fn tear_down(gateways: Vec<Gateway>) {
    for g in gateways {
        let Gateway {
            sidecar, held, ns, ..
        } = g;
        drop(sidecar);
        drop(held);
        drop(ns);
    }
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

    // The sessions: held ones, unrelated noise, and short ones that are closed once seen.
    open_sessions(&mut gateways, &downstream);

    prom.wait_for(
        "the fleet's numbers in Prometheus",
        Duration::from_secs(30),
        |p| check_fleet(p, &PROMETHEUS_VIEW, &gateways),
    );

    // Every host's series carry its own name, target_info included (gw-3: the resource
    // attribute beat the UTS hostname).
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
    drop(downstream);
    drop(ds);
    println!(
        "fleet_of_three_gateways_scraped_by_one_prometheus: {:.1}s",
        started.elapsed().as_secs_f64()
    );
}

// ---------------------------------------------------------------------------------------------
// A FLEET OF FIFTY (FLEET_SIZE overrides; scripts/fleet.sh runs it and prints the cost). The
// same pieces at fleet scale: generated gateways with known sessions, Prometheus configured from
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

/// Gateway `i`'s plan: a spread of held, closed and unrelated sessions, some targets idle.
fn generated_plan(i: usize) -> Plan {
    Plan {
        host: Box::leak(format!("fleet-{:03}", i + 1).into_boxed_str()),
        lan_host: 20 + i as u8,
        naming: HostName::Uts,
        held: [i % 4, (i * 3) % 5],
        closed: [i % 3, (i / 2) % 2],
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
    // No series lost or doubled: the same series count per sidecar in both back ends.
    let per_host = |b: &Backend, host: &str, sel: &str| {
        keyed(
            b.query(&format!(
                "count by ({host}) ({{__name__=~\"fix_connections.*\", {sel}}})"
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
    drop(downstream);
    drop(ds);
    println!(
        "fleet_of_fifty_sidecars_adds_up_in_prometheus_and_victoria_metrics ({n}): {:.1}s",
        started.elapsed().as_secs_f64()
    );
}
