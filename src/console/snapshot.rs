//! `fix-monitor snapshot`: one poll of the configured source, each matching socket attributed
//! to its target, printed as a table or JSON. For scripts, so it is quick: no runtime, no
//! OpenTelemetry, no tracker. With a single look there is no history: everything is simply
//! "active now", with no age, no opens or closes.

use std::time::SystemTime;

use serde::Serialize;

use crate::config::Settings;
use crate::session::{rfc3339, target_names, Session, SessionJson};
use crate::source::{self, SocketEntry, SourceError, SourceKind};
use crate::target::{Target, Targets};
use crate::tracker::Timestamp;

/// How to print a snapshot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// Aligned columns, then the count per target.
    Table,
    /// One JSON document (the keys of `/connections`).
    Json,
}

#[derive(Debug, Clone, Serialize)]
pub struct Snapshot {
    pub timestamp: String,
    pub hostname: String,
    pub source: &'static str,
    pub targets: Vec<SnapshotTarget>,
    pub total: usize,
    /// The same JSON as `/connections`, without the lifetimes a single look cannot know.
    pub connections: Vec<SessionJson>,
    /// Each connection's health and staleness, for the table (the JSON has them inside).
    #[serde(skip)]
    pub health: Vec<Option<(crate::source::TcpHealth, Option<bool>)>>,
}

/// A target and how many of its connections are established now.
#[derive(Debug, Clone, Serialize)]
pub struct SnapshotTarget {
    pub name: String,
    pub address: String,
    pub port: Option<u16>,
    pub local_ports: Option<String>,
    pub active: u64,
}

/// Opens the source, polls it once, and attributes what it saw.
pub fn take(settings: &Settings) -> Result<Snapshot, SourceError> {
    let mut source = source::open_oneshot(
        settings.poll.source,
        &settings.targets,
        settings.poll.reconcile_interval,
    )?;
    let mut sockets = Vec::new();
    // `poll.process_lookup`: one walk of /proc/*/fd for the sockets found (netlink, procfs).
    let lookup = settings.poll.process_lookup
        && source.capabilities().process == source::ProcessFeed::ByInode;
    if lookup {
        source.keep_inodes();
    }
    source.poll(&mut sockets)?;
    #[cfg(target_os = "linux")]
    let owners = if lookup {
        let inodes = sockets.iter().filter_map(|s| source.inode(s.id)).collect();
        source::proc_owner::ProcOwners::new().find(&inodes)
    } else {
        Default::default()
    };
    #[cfg(not(target_os = "linux"))]
    let owners = std::collections::HashMap::<u64, source::Process>::new();
    let process_of = |s: &SocketEntry| source.inode(s.id).and_then(|i| owners.get(&i).cloned());
    // The name the sidecar would report: `host.name` from OTEL_RESOURCE_ATTRIBUTES if set there,
    // else the machine's hostname.
    let host = crate::instruments::configured_host_name().unwrap_or_else(crate::app::hostname);
    Ok(Snapshot::new(
        &settings.targets,
        source.kind(),
        host,
        SystemTime::now(),
        &sockets,
        &process_of,
    ))
}

impl Snapshot {
    /// Attributes `sockets` to `targets`, each with the process `process_of` names (if any):
    /// the pure part of [`take`].
    pub fn new(
        targets: &Targets,
        source: SourceKind,
        hostname: String,
        at: SystemTime,
        sockets: &[SocketEntry],
        process_of: &dyn Fn(&SocketEntry) -> Option<crate::source::Process>,
    ) -> Snapshot {
        let mut found: Vec<(usize, &SocketEntry)> = sockets
            .iter()
            .filter_map(|s| Some((targets.classify(&s.local, &s.remote)?, s)))
            .collect();
        found.sort_by_key(|(t, s)| (*t, s.local, s.remote));
        found.dedup_by_key(|(_, s)| (s.local, s.remote));
        let names = target_names(targets);
        let now = Timestamp::now();
        // A single look can judge staleness too: the kernel says how long each was silent.
        let sessions: Vec<Session> = found
            .iter()
            .map(|(t, s)| {
                let mut session = Session::seen(names[*t].clone(), s);
                session.process = process_of(s);
                if let Some((h, stale)) = &mut session.health {
                    *stale = targets
                        .get(*t)
                        .stale_after
                        .map(|after| h.receive_silence() > after);
                }
                session
            })
            .collect();
        let mut counts = vec![0u64; targets.len()];
        for (t, _) in &found {
            counts[*t] += 1;
        }
        Snapshot {
            timestamp: rfc3339(at),
            hostname,
            source: source.as_str(),
            targets: targets
                .iter()
                .zip(counts)
                .map(|(t, active)| SnapshotTarget {
                    name: t.name.clone(),
                    address: t.net.to_string(),
                    port: t.port,
                    local_ports: t.local_ports.map(|r| r.to_string()),
                    active,
                })
                .collect(),
            total: found.len(),
            connections: sessions.iter().map(|s| s.json(now)).collect(),
            health: sessions.iter().map(|s| s.health).collect(),
        }
    }

    /// The connections, then the count per target and the total.
    pub fn table(&self, targets: &Targets) -> String {
        let mut titles = vec!["TARGET", "LOCAL", "REMOTE", "STATE"];
        titles.extend(super::view::HEALTH_TITLES);
        titles.extend(super::view::PROCESS_TITLES);
        let mut rows = vec![cells(&titles)];
        for (c, h) in self.connections.iter().zip(&self.health) {
            let mut row = vec![
                c.target.clone(),
                c.local_addr.clone(),
                c.remote_addr.clone(),
                c.state.to_owned(),
            ];
            row.extend(super::view::health_cells(h.as_ref()));
            // The process, where the source knows it (`-` otherwise).
            row.push(c.pid.map_or_else(|| "-".into(), |p| p.to_string()));
            row.push(c.comm.clone().unwrap_or_else(|| "-".into()));
            rows.push(row);
        }
        let mut lines = super::view::table(
            &rows,
            &[
                false, false, false, false, true, true, true, true, true, false,
            ],
        );
        lines.push(String::new());
        let mut rows = vec![cells(&["TARGET", "ADDRESS", "LOCAL PORTS", "ACTIVE"])];
        for (t, s) in targets.iter().zip(&self.targets) {
            rows.push(vec![
                t.name.clone(),
                Target::default_name(&t.net, t.port),
                s.local_ports.clone().unwrap_or_else(|| "any".into()),
                s.active.to_string(),
            ]);
        }
        rows.push(vec![
            "total".into(),
            String::new(),
            String::new(),
            self.total.to_string(),
        ]);
        lines.extend(super::view::table(&rows, &[false, false, false, true]));
        let mut text = lines.join("\n");
        text.push('\n');
        text
    }

    pub fn json(&self) -> String {
        let mut text = serde_json::to_string_pretty(self).expect("a snapshot serializes");
        text.push('\n');
        text
    }
}

fn cells(titles: &[&str]) -> Vec<String> {
    titles.iter().map(|s| (*s).to_owned()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::TcpState;
    use crate::target::PortRange;

    #[test]
    fn attributes_counts_and_prints() {
        let net = "10.0.0.5/32".parse().unwrap();
        let net2 = "10.0.0.6/32".parse().unwrap();
        let targets = Targets::new(vec![
            Target {
                name: "venue-a".into(),
                net,
                port: Some(9876),
                local_ports: Some(PortRange {
                    start: 5000,
                    end: 5999,
                }),
                heartbeat: None,
                stale_after: None,
            },
            Target {
                name: "venue-b".into(),
                net: net2,
                port: None,
                local_ports: None,
                heartbeat: None,
                stale_after: None,
            },
        ]);
        let s = |l: &str, r: &str| SocketEntry {
            local: l.parse().unwrap(),
            remote: r.parse().unwrap(),
            state: TcpState::Established,
            id: 0,
            health: None,
        };
        let sockets = [
            s("10.0.0.1:5002", "10.0.0.5:9876"),
            s("10.0.0.1:5001", "10.0.0.5:9876"),
            s("10.0.0.1:6001", "10.0.0.5:9876"),
            s("10.0.0.1:40000", "10.0.0.6:1234"),
            s("10.0.0.1:40001", "10.0.0.7:1234"),
        ];
        let snap = Snapshot::new(
            &targets,
            SourceKind::Procfs,
            "gw".into(),
            SystemTime::UNIX_EPOCH,
            &sockets,
            &|s| {
                (s.local.port() == 5002).then(|| crate::source::Process {
                    pid: 4242,
                    comm: "fix-gateway".into(),
                })
            },
        );
        assert_eq!(snap.total, 3);
        assert_eq!(
            snap.targets.iter().map(|t| t.active).collect::<Vec<_>>(),
            [2, 1]
        );
        assert_eq!(snap.connections[0].local_addr, "10.0.0.1:5001");
        let table = snap.table(&targets);
        let expected = "\
TARGET   LOCAL           REMOTE         STATE        RTT  SILENCE  RETRANS  SEND-Q   PID  COMMAND
venue-a  10.0.0.1:5001   10.0.0.5:9876  ESTABLISHED    -        -        -       -     -  -
venue-a  10.0.0.1:5002   10.0.0.5:9876  ESTABLISHED    -        -        -       -  4242  fix-gateway
venue-b  10.0.0.1:40000  10.0.0.6:1234  ESTABLISHED    -        -        -       -     -  -

TARGET   ADDRESS        LOCAL PORTS  ACTIVE
venue-a  10.0.0.5:9876  5000-5999         2
venue-b  10.0.0.6       any               1
total                                     3
";
        assert_eq!(table, expected);
        let v: serde_json::Value = serde_json::from_str(&snap.json()).unwrap();
        assert_eq!(v["total"], 3);
        assert_eq!(v["connections"][2]["target"], "venue-b");
        assert_eq!(v["connections"][1]["pid"], 4242);
        assert_eq!(v["connections"][1]["comm"], "fix-gateway");
        assert!(
            v["connections"][0].get("pid").is_none(),
            "not known: left out"
        );
        assert_eq!(v["targets"][0]["local_ports"], "5000-5999");
    }
}
