//! What one TCP session to a target is, for every reader: the endpoints (`/connections`,
//! `/health`), the console's table and its report, and `snapshot`.
//!
//! A [`Session`] is the one model; [`SessionJson`] and the console's rows are presentations of
//! it. A single look (`snapshot`) has no history, so its sessions carry no [`Life`]; the
//! tracker's sessions know when they were first seen, and closed ones when they ended.
//! Per-session facts added later (TCP health, the FIX layer) belong here, once.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use serde::Serialize;

use crate::source::{SocketEntry, TcpHealth, TcpState};
use crate::target::Targets;
use crate::tracker::{Connection, Timestamp};

/// One session: which target, which socket, and what is known of its life.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Session {
    /// The target's name (shared with every other session of the target).
    pub target: Arc<str>,
    pub local: SocketAddr,
    pub remote: SocketAddr,
    pub state: TcpState,
    /// None for a single look, which cannot know when a session began.
    pub life: Option<Life>,
    /// The process that made the connection, where the source knows it (eBPF mode).
    pub process: Option<crate::source::Process>,
    /// Who hung up, for closed sessions where the source knows it (eBPF mode).
    pub closed_by: Option<crate::source::ClosedBy>,
    /// Why the kernel ended it, for closed sessions where the source says (eBPF mode: a RST
    /// and its reason, the socket error).
    pub kernel_cause: Option<crate::source::KernelCause>,
    /// Why it ended (closed sessions, once judged: `crate::ends`).
    pub end: Option<crate::ends::Verdict>,
    /// The kernel's `tcp_info` at the last poll (netlink only), and whether the session is
    /// stale (`None`: its target judges no staleness).
    pub health: Option<(TcpHealth, Option<bool>)>,
}

/// What the tracker knows of a session's life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Life {
    /// When it was first seen (precision: one poll interval).
    pub since: Timestamp,
    /// Already open when the monitor started: the real start is earlier.
    pub preexisting: bool,
    /// When it was seen gone, and how long it lasted; None while it is active.
    pub ended: Option<Ended>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ended {
    pub at: Timestamp,
    pub duration: Duration,
}

impl Session {
    /// A socket seen once, attributed to `target`.
    pub fn seen(target: Arc<str>, s: &SocketEntry) -> Session {
        Session {
            target,
            local: s.local,
            remote: s.remote,
            state: s.state,
            life: None,
            process: None,
            closed_by: None,
            kernel_cause: None,
            end: None,
            health: s.health.map(|h| (h, None)),
        }
    }

    /// A connection the tracker holds (`ended`: if it closed).
    pub fn tracked(c: &Connection, names: &[Arc<str>], ended: Option<Ended>) -> Session {
        Session {
            target: names[c.target].clone(),
            local: c.key.local,
            remote: c.key.remote,
            state: c.state,
            life: Some(Life {
                since: c.since,
                preexisting: c.preexisting,
                ended,
            }),
            process: None,
            closed_by: None,
            kernel_cause: None,
            end: None,
            health: None,
        }
    }

    /// Active: its age at `now`. Closed: how long it lasted. None without a known life.
    pub fn duration(&self, now: Timestamp) -> Option<Duration> {
        let life = self.life?;
        Some(match life.ended {
            Some(e) => e.duration,
            None => now.mono.saturating_duration_since(life.since.mono),
        })
    }

    /// The JSON shape, as of `now`.
    pub fn json(&self, now: Timestamp) -> SessionJson {
        let life = self.life.map(|l| {
            let d = self.duration(now).unwrap_or_default();
            LifeJson {
                start_time: rfc3339(l.since.wall),
                duration_seconds: d.as_secs_f64(),
                age: hms(d),
                preexisting: l.preexisting,
                end_time: l.ended.map(|e| rfc3339(e.at.wall)),
                duration: l.ended.map(|e| hms(e.duration)),
            }
        });
        SessionJson {
            id: format!("{}-{}", self.local, self.remote),
            target: self.target.to_string(),
            local_addr: self.local.to_string(),
            remote_addr: self.remote.to_string(),
            local_port: self.local.port(),
            remote_port: self.remote.port(),
            state: self.state.as_str(),
            life,
            pid: self.process.as_ref().map(|p| p.pid),
            comm: self.process.as_ref().map(|p| p.comm.to_string()),
            closed_by: self.closed_by.map(|b| b.as_str()),
            kernel_cause: self.kernel_cause.as_ref().map(|k| k.to_string()),
            end_cause: self.end.as_ref().map(|v| v.cause.as_str()),
            end_evidence: self.end.as_ref().map(|v| v.evidence.clone()),
            health: self.health.map(|(h, stale)| HealthJson::new(&h, stale)),
            fix: None,
        }
    }
}

/// A session's TCP health as JSON: seconds and bytes, every field the kernel gave, none it
/// did not (see dashboards/README.md, "Session health").
#[derive(Debug, Clone, Serialize)]
pub struct HealthJson {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stale: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rtt_seconds: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rtt_var_seconds: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub min_rtt_seconds: Option<f64>,
    pub retransmits: u32,
    pub lost: u32,
    pub send_queue_bytes: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unacked_bytes: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub not_sent_bytes: Option<u32>,
    pub recv_queue_bytes: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bytes_acked: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bytes_received: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bytes_sent: Option<u64>,
    pub last_data_received_seconds: f64,
    pub last_data_sent_seconds: f64,
    pub last_ack_received_seconds: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub delivery_rate_bytes_per_second: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rwnd_limited_seconds: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sndbuf_limited_seconds: Option<f64>,
}

impl HealthJson {
    pub fn new(h: &TcpHealth, stale: Option<bool>) -> HealthJson {
        let us = |v: u64| v as f64 / 1e6;
        let ms = |v: u32| f64::from(v) / 1e3;
        HealthJson {
            stale,
            rtt_seconds: h.rtt().map(|d| d.as_secs_f64()),
            rtt_var_seconds: h.rtt().map(|_| us(h.rtt_var_us.into())),
            min_rtt_seconds: h.min_rtt_us.map(|v| us(v.into())),
            retransmits: h.retransmits,
            lost: h.lost,
            send_queue_bytes: h.send_queue,
            unacked_bytes: h.unacked_bytes(),
            not_sent_bytes: h.not_sent,
            recv_queue_bytes: h.recv_queue,
            bytes_acked: h.bytes_acked,
            bytes_received: h.bytes_received,
            bytes_sent: h.bytes_sent,
            last_data_received_seconds: ms(h.last_data_recv_ms),
            last_data_sent_seconds: ms(h.last_data_sent_ms),
            last_ack_received_seconds: ms(h.last_ack_recv_ms),
            delivery_rate_bytes_per_second: h.delivery_rate,
            rwnd_limited_seconds: h.rwnd_limited_us.map(us),
            sndbuf_limited_seconds: h.sndbuf_limited_us.map(us),
        }
    }
}

/// The targets' names, shared by their sessions.
pub fn target_names(targets: &Targets) -> Vec<Arc<str>> {
    targets.iter().map(|t| Arc::from(t.name.as_str())).collect()
}

/// A session as JSON, with the keys of the original `/connections` (`id`, `local_addr`,
/// `remote_addr`, `local_port`, `remote_port`, `duration_seconds`) and the target it belongs to.
#[derive(Debug, Clone, Serialize)]
pub struct SessionJson {
    pub id: String,
    pub target: String,
    pub local_addr: String,
    pub remote_addr: String,
    pub local_port: u16,
    pub remote_port: u16,
    pub state: &'static str,
    #[serde(flatten, skip_serializing_if = "Option::is_none")]
    pub life: Option<LifeJson>,
    /// The process that made the connection (eBPF mode, outbound connections).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pid: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub comm: Option<String>,
    /// Closed sessions in eBPF mode: `local`, `remote` or `reset`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub closed_by: Option<&'static str>,
    /// Closed sessions in eBPF mode, when the kernel ended it: `reset sent (REASON)`, `reset
    /// received`, `socket error: ...`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kernel_cause: Option<String>,
    /// Closed sessions: why it ended (`crate::ends::Cause`), once judged (at most a few
    /// seconds after the close, when the FIX layer runs), and the evidence, in words.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub end_cause: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub end_evidence: Option<String>,
    /// TCP health (netlink only; absent where the source cannot tell).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub health: Option<HealthJson>,
    /// The FIX session the FIX layer last saw on it (`/sessions`), filled by `/connections`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fix: Option<FixLinkJson>,
}

/// A TCP session's FIX session, as `/connections` names it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FixLinkJson {
    /// The FIX session (`SENDER->TARGET` as we send), as `/sessions` names it.
    pub session: String,
    /// Read on a local TLS tunnel's plaintext leg and joined to this session: the tunnel's
    /// address (`targets[].tls_tunnel`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tunnel: Option<SocketAddr>,
}

#[derive(Debug, Clone, Serialize)]
pub struct LifeJson {
    /// When the session was first seen (RFC 3339, UTC).
    pub start_time: String,
    /// Active: seconds since `start_time`. Closed: how long it lasted.
    pub duration_seconds: f64,
    /// The same, as hh:mm:ss.
    pub age: String,
    /// Already open when the monitor started: the real start is earlier.
    pub preexisting: bool,
    /// Closed sessions: when it was seen gone.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub end_time: Option<String>,
    /// Closed sessions: how long it lasted, as hh:mm:ss.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub duration: Option<String>,
}

/// RFC 3339 in UTC, to the millisecond.
pub fn rfc3339(t: SystemTime) -> String {
    chrono::DateTime::<chrono::Utc>::from(t)
        .format("%Y-%m-%dT%H:%M:%S%.3fZ")
        .to_string()
}

/// hh:mm:ss, hours unbounded (a week-long session reads 168:00:00).
pub fn hms(d: Duration) -> String {
    let s = d.as_secs();
    format!("{:02}:{:02}:{:02}", s / 3600, (s % 3600) / 60, s % 60)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hms_counts_hours_past_a_day() {
        assert_eq!(hms(Duration::from_secs(0)), "00:00:00");
        assert_eq!(hms(Duration::from_secs(3661)), "01:01:01");
        assert_eq!(hms(Duration::from_secs(7 * 86400)), "168:00:00");
    }

    #[test]
    fn rfc3339_is_utc_with_millis() {
        let t = SystemTime::UNIX_EPOCH + Duration::from_millis(1_700_000_000_123);
        assert_eq!(rfc3339(t), "2023-11-14T22:13:20.123Z");
    }

    #[test]
    fn one_session_three_lives_keep_the_original_keys() {
        let t0 = Timestamp::now();
        let mut s = Session {
            target: "venue-a".into(),
            local: "10.0.0.1:5000".parse().unwrap(),
            remote: "10.0.0.5:9876".parse().unwrap(),
            state: TcpState::Established,
            life: None,
            process: None,
            closed_by: None,
            kernel_cause: None,
            end: None,
            health: None,
        };
        let seen = serde_json::to_value(s.json(t0)).unwrap();
        let keys =
            |v: &serde_json::Value| v.as_object().unwrap().keys().cloned().collect::<Vec<_>>();
        assert_eq!(
            keys(&seen),
            [
                "id",
                "local_addr",
                "local_port",
                "remote_addr",
                "remote_port",
                "state",
                "target"
            ]
        );
        assert_eq!(seen["id"], "10.0.0.1:5000-10.0.0.5:9876");

        s.life = Some(Life {
            since: t0,
            preexisting: false,
            ended: None,
        });
        let active = serde_json::to_value(s.json(t0.after(Duration::from_secs(61)))).unwrap();
        assert_eq!(active["duration_seconds"], 61.0);
        assert_eq!(active["age"], "00:01:01");
        assert!(active.get("end_time").is_none());

        s.life.as_mut().unwrap().ended = Some(Ended {
            at: t0.after(Duration::from_secs(2)),
            duration: Duration::from_secs(2),
        });
        // A closed session's duration does not grow with the time it is read at.
        let closed = serde_json::to_value(s.json(t0.after(Duration::from_secs(99)))).unwrap();
        assert_eq!(closed["duration_seconds"], 2.0);
        assert_eq!(closed["duration"], "00:00:02");
        assert!(closed["end_time"].is_string());
    }
}
