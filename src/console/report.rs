//! The JSON report written when watching ends, as the original monitor wrote one on Ctrl+C.
//!
//! It keeps the original's keys where they still mean the same: `timestamp`, `stats` (with
//! `total_connections`, `current_connections`, `peak_connections`), `active_connections`,
//! `recent_disconnected`; the one `downstream_server` became `targets`, each with its own
//! counts. Sessions are the same JSON `/connections` serves. `ends_by_cause` is new: per
//! target, the ends judged while watching, by cause (what `fix_session_ends_total` counted).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use serde::Serialize;

use crate::session::{rfc3339, SessionJson};
use crate::state::{State, TargetView};
use crate::tracker::Timestamp;

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// When the report was taken (RFC 3339, UTC).
    pub timestamp: String,
    pub host: String,
    pub source: &'static str,
    pub poll_interval_seconds: f64,
    /// When watching began.
    pub started: String,
    pub polls: u64,
    pub targets: Vec<TargetView>,
    /// Over all targets.
    pub stats: Totals,
    pub active_connections: Vec<SessionJson>,
    /// Oldest first, as the original listed them.
    pub recent_disconnected: Vec<SessionJson>,
    /// Per target (configuration order), its ends by cause.
    pub ends_by_cause: Vec<TargetEnds>,
}

/// One target's ends judged while watching.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TargetEnds {
    pub target: String,
    pub total: u64,
    /// Cause name -> ends; only the causes seen.
    pub causes: BTreeMap<&'static str, u64>,
}

/// The original's `stats`, over all targets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Totals {
    /// Connections seen open, including those already open when watching began.
    pub total_connections: u64,
    pub current_connections: u64,
    pub closed_connections: u64,
    /// Highest number active at once.
    pub peak_connections: u64,
}

impl Report {
    pub fn new(m: &State, now: Timestamp) -> Report {
        let targets = m.targets();
        let stats = Totals {
            total_connections: targets.iter().map(|t| t.stats.opened).sum(),
            current_connections: targets.iter().map(|t| t.stats.active).sum(),
            closed_connections: targets.iter().map(|t| t.stats.closed).sum(),
            peak_connections: m.peak,
        };
        Report {
            timestamp: rfc3339(now.wall),
            host: m.meta.host.clone(),
            source: m.meta.source.as_str(),
            poll_interval_seconds: m.meta.interval.as_secs_f64(),
            started: rfc3339(m.meta.started.wall),
            polls: m.health.polls,
            targets,
            stats,
            active_connections: m.connections(now),
            recent_disconnected: m.closed_json(now),
            ends_by_cause: m
                .meta
                .targets
                .iter()
                .zip(&m.ends)
                .map(|(t, e)| TargetEnds {
                    target: t.name.clone(),
                    total: e.total(),
                    causes: e.by_count().iter().map(|(c, n)| (c.as_str(), *n)).collect(),
                })
                .collect(),
        }
    }

    /// Writes the report as indented JSON to `path`.
    pub fn write(&self, path: &Path) -> std::io::Result<()> {
        let mut text = serde_json::to_string_pretty(self).map_err(std::io::Error::other)?;
        text.push('\n');
        std::fs::write(path, text)
    }
}

/// The original's file name, `fix_connections_YYYYmmdd_HHMMSS.json` in local time, in the
/// current directory.
pub fn default_path(now: SystemTime) -> PathBuf {
    let t = chrono::DateTime::<chrono::Local>::from(now);
    PathBuf::from(format!(
        "fix_connections_{}.json",
        t.format("%Y%m%d_%H%M%S")
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::{SocketEntry, TcpState};
    use crate::target::{Target, Targets};
    use std::net::SocketAddr;
    use std::time::Duration;

    #[test]
    fn keeps_the_original_keys_and_counts_over_all_targets() {
        let mk = |net: &str, port| Target::test(net, port, None);
        let targets = Targets::new(vec![mk("10.0.0.5/32", Some(9876)), mk("10.0.0.6/32", None)]);
        let t0 = Timestamp::now();
        let sock = |port, remote: &str, id| SocketEntry {
            local: SocketAddr::from(([10, 0, 0, 1], port)),
            remote: remote.parse().unwrap(),
            state: TcpState::Established,
            id,
            health: None,
        };
        let (a, b, c) = (
            sock(5000, "10.0.0.5:9876", 1),
            sock(5001, "10.0.0.5:9876", 2),
            sock(5002, "10.0.0.6:1", 3),
        );
        let m = crate::poller::tests::state_after(
            targets,
            t0,
            &[
                (Duration::ZERO, vec![a, b]),
                (Duration::from_secs(2), vec![a, c]),
            ],
        );
        let r = Report::new(&m, t0.after(Duration::from_secs(3)));
        let v = serde_json::to_value(&r).unwrap();
        for key in [
            "timestamp",
            "host",
            "targets",
            "stats",
            "active_connections",
            "recent_disconnected",
        ] {
            assert!(v.get(key).is_some(), "{key} missing: {v:#}");
        }
        assert_eq!(
            v["stats"],
            serde_json::json!({"total_connections": 3, "current_connections": 2,
                "closed_connections": 1, "peak_connections": 2})
        );
        assert_eq!(v["targets"][0]["opened"], 2);
        assert_eq!(v["targets"][1]["active"], 1);
        assert_eq!(v["recent_disconnected"][0]["local_addr"], "10.0.0.1:5001");
        assert_eq!(v["recent_disconnected"][0]["duration_seconds"], 2.0);
        assert_eq!(v["active_connections"].as_array().unwrap().len(), 2);
        // The close was judged at once (no FIX layer to wait for); polling alone has no
        // evidence of why, and the report counts it as /metrics does.
        assert_eq!(v["recent_disconnected"][0]["end_cause"], "unknown");
        let name = |i: usize| v["targets"][i]["name"].clone();
        assert_eq!(
            v["ends_by_cause"],
            serde_json::json!([
                {"target": name(0), "total": 1, "causes": {"unknown": 1}},
                {"target": name(1), "total": 0, "causes": {}},
            ])
        );
    }

    #[test]
    fn default_file_name_is_the_originals() {
        let p = default_path(SystemTime::now());
        let name = p.to_str().unwrap();
        assert!(name.starts_with("fix_connections_") && name.ends_with(".json"));
        assert_eq!(name.len(), "fix_connections_20240101_120000.json".len());
    }
}
