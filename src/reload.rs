//! Reloading the configuration without a restart: SIGHUP, or `POST /-/reload` where
//! `prometheus.reload_endpoint` turns it on (behind the endpoint's auth, as Prometheus's
//! `--web.enable-lifecycle`).
//!
//! A reload reads the configuration exactly as the start did (the same flags, the same
//! environment, the file again; the start-up step's I/O too, such as the web config's
//! certificates) and either applies all of it or none of it:
//! - bad values are refused with the same all-at-once errors as at start, logged, and the
//!   running configuration stays;
//! - a change to a setting that only a restart can apply (where the sidecar listens or pushes,
//!   its source and poll settings, the state directory, the log format, whether the FIX layer
//!   runs or captures, the TLS tunnels) is refused the same way, naming each key;
//! - otherwise the targets (added, removed, changed), their schedules, the log level, the FIX
//!   settings and the web config apply at once, and every count of a target that stays goes
//!   on (`crate::app::Sidecar::reload`).
//!
//! `fix_monitor_config_last_reload_successful` and
//! `fix_monitor_config_last_reload_success_timestamp_seconds` say how the last one went, as
//! Prometheus's own do.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use opentelemetry::metrics::Meter;

use crate::config::{ConfigErrors, LogSettings, Settings};
use crate::startup::Resources;

/// Metric names.
pub mod names {
    /// 1 when the last reload applied (or none was asked for), 0 when it was refused.
    pub const LAST_RELOAD_SUCCESSFUL: &str = "fix_monitor_config_last_reload_successful";
    /// When the running configuration was loaded: the start, or the last reload that applied.
    /// Exposed as `fix_monitor_config_last_reload_success_timestamp_seconds` (unit `s`).
    pub const LAST_RELOAD_SUCCESS_TIMESTAMP: &str =
        "fix_monitor_config_last_reload_success_timestamp";
    /// Both.
    pub const ALL: &[&str] = &[LAST_RELOAD_SUCCESSFUL, LAST_RELOAD_SUCCESS_TIMESTAMP];
}

/// Reads and checks the configuration as at start (flags, environment, file, start-up step),
/// every problem at once.
pub type Load = Box<dyn Fn() -> Result<(Settings, Resources), ConfigErrors> + Send + Sync>;

/// Sets the log level of the running subscriber (`log.level`).
pub type SetLogLevel = Box<dyn Fn(&LogSettings) -> Result<(), String> + Send + Sync>;

/// Loads the configuration again; applies a log level.
pub struct Reloader {
    pub load: Load,
    pub log_level: SetLogLevel,
}

/// A reload asked for over HTTP, and where its outcome goes.
pub type Request = tokio::sync::oneshot::Sender<Result<String, String>>;

/// How the last reload went, for the two gauges.
#[derive(Clone)]
pub struct Status {
    ok: Arc<AtomicBool>,
    /// Unix seconds, as f64 bits.
    at: Arc<AtomicU64>,
}

impl Status {
    /// Registers the gauges: successful, loaded now.
    pub fn register(meter: &Meter) -> Status {
        let status = Status {
            ok: Arc::new(AtomicBool::new(true)),
            at: Arc::new(AtomicU64::new(0)),
        };
        status.succeeded();
        let ok = status.ok.clone();
        meter
            .u64_observable_gauge(names::LAST_RELOAD_SUCCESSFUL)
            .with_description(
                "1 when the last configuration reload applied (or none was asked for), 0 when it \
                 was refused (the running configuration stays; the log says why)",
            )
            .with_callback(move |obs| obs.observe(u64::from(ok.load(Ordering::Relaxed)), &[]))
            .build();
        let at = status.at.clone();
        meter
            .f64_observable_gauge(names::LAST_RELOAD_SUCCESS_TIMESTAMP)
            .with_unit("s")
            .with_description(
                "When the running configuration was loaded (Unix time): the start, or the last \
                 reload that applied",
            )
            .with_callback(move |obs| obs.observe(f64::from_bits(at.load(Ordering::Relaxed)), &[]))
            .build();
        status
    }

    /// A reload applied: now.
    pub fn succeeded(&self) {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs_f64();
        self.at.store(now.to_bits(), Ordering::Relaxed);
        self.ok.store(true, Ordering::Relaxed);
    }

    /// A reload was refused.
    pub fn failed(&self) {
        self.ok.store(false, Ordering::Relaxed);
    }
}

/// The keys whose change only a restart applies that differ between the running `old` and the
/// reloaded `new` configuration, as `fix-monitor config` names them.
pub fn restart_only(old: &Settings, new: &Settings) -> Vec<String> {
    let mut keys = Vec::new();
    let mut differ = |key: &str, changed: bool| {
        if changed {
            keys.push(key.to_owned());
        }
    };
    differ("poll", old.poll != new.poll);
    let (p, q) = (&old.prometheus, &new.prometheus);
    differ("prometheus.enabled", p.enabled != q.enabled);
    differ("prometheus.listen", p.listen != q.listen);
    differ(
        "prometheus.expose_connections",
        p.expose_connections != q.expose_connections,
    );
    differ(
        "prometheus.reload_endpoint",
        p.reload_endpoint != q.reload_endpoint,
    );
    differ("otlp", old.otlp != new.otlp);
    differ("state", old.state != new.state);
    differ("log.format", old.log.format != new.log.format);
    differ("fix.capture", old.fix.capture != new.fix.capture);
    differ(
        "fix.logs (the FIX layer on or off)",
        old.fix.enabled() != new.fix.enabled(),
    );
    let tunnels = |s: &Settings| -> Vec<(String, String)> {
        (s.targets.iter().zip(&s.fix.target_tls_tunnel))
            .filter_map(|(t, tunnel)| Some((t.name.clone(), tunnel.as_ref()?.to_string())))
            .collect()
    };
    differ("targets[].tls_tunnel", tunnels(old) != tunnels(new));
    keys
}

/// What a reload did, for the log and the HTTP answer.
pub fn describe(old: &Settings, new: &Settings, dropped: &str) -> String {
    let names =
        |s: &Settings| -> Vec<String> { s.targets.iter().map(|t| t.name.clone()).collect() };
    let (before, after) = (names(old), names(new));
    let added: Vec<_> = after
        .iter()
        .filter(|n| !before.contains(n))
        .cloned()
        .collect();
    let removed: Vec<_> = before
        .iter()
        .filter(|n| !after.contains(n))
        .cloned()
        .collect();
    let changed: Vec<_> = (new.targets.iter())
        .filter(|n| (old.targets.iter()).any(|t| t.name == n.name && *t != **n))
        .map(|t| t.name.clone())
        .collect();
    let list = |v: &[String]| {
        if v.is_empty() {
            "none".to_owned()
        } else {
            v.join(", ")
        }
    };
    format!(
        "configuration reloaded: targets added: {}; removed: {}; changed: {}; sessions no longer \
         watched: {dropped}",
        list(&added),
        list(&removed),
        list(&changed)
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::parse_toml_str;

    fn settings(toml: &str) -> Settings {
        parse_toml_str(toml, "/etc/x.toml").expect("valid").settings
    }

    #[test]
    fn only_what_a_restart_applies_is_named() {
        let base = "[[targets]]\nname = \"a\"\naddress = \"10.0.0.1\"\n";
        let old = settings(base);
        let targets = settings(&format!(
            "{base}[[targets]]\nname = \"b\"\naddress = \"10.0.0.2\"\n[log]\nlevel = \"debug\"\n"
        ));
        assert!(restart_only(&old, &targets).is_empty());
        let moved = settings(&format!(
            "{base}[prometheus]\nlisten = \"127.0.0.1:9999\"\n[poll]\ninterval = \"2s\"\n\
             [log]\nformat = \"json\"\n"
        ));
        assert_eq!(
            restart_only(&old, &moved),
            ["poll", "prometheus.listen", "log.format"]
        );
        let tunnel = settings(
            "[[targets]]\nname = \"a\"\naddress = \"10.0.0.1\"\ntls_tunnel = \"127.0.0.1:7001\"\n\
             [fix]\ncapture = true\n",
        );
        assert_eq!(
            restart_only(&old, &tunnel),
            [
                "fix.capture",
                "fix.logs (the FIX layer on or off)",
                "targets[].tls_tunnel"
            ]
        );
        let text = describe(&old, &targets, "0");
        assert!(
            text.contains("added: b; removed: none; changed: none"),
            "{text}"
        );
    }
}
