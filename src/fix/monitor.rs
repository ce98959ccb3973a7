//! The FIX layer running: one thread owns the sources (the packet socket, the log follower) and
//! the tracker, and publishes an immutable [`FixState`] after each round (a `watch` channel, as
//! the TCP layer's `state`), which `/sessions`, the metrics' callbacks and the console read
//! without waiting for the thread. Order round trips are recorded in the latency histogram as
//! they happen. Started only when `[fix]` asks for it: with it off nothing here runs.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use opentelemetry::metrics::{Histogram, Meter};
use opentelemetry::KeyValue;
use serde::Serialize;
use tokio::sync::watch;

use super::forensics::{Outcomes, SeqKind, Sequence};
use super::logs::{LogFollower, LogStats};
use super::reassembly::{Limits as StreamLimits, StreamStats};
use super::tracker::{
    Direction, Event, Limits, LinkEnd, LogonState, Origin, Session, TcpLink, Tracker,
};
use super::wire::{ConnView, Wire, WireStats};
use crate::config::{FixSettings, LogonLockout, MessageLimit};
use crate::target::Targets;

/// How often the state is published, logs are read and holes and orders expire.
pub const ROUND: Duration = Duration::from_millis(250);

/// One direction of a session, as reported.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct DirectionJson {
    pub messages: u64,
    pub by_type: BTreeMap<String, u64>,
    pub sequence_gaps: u64,
    pub sequence_gap_messages: u64,
    pub seq_too_low: u64,
    pub next_seq: Option<u64>,
    pub test_requests: u64,
    pub resend_requests: u64,
    pub sequence_resets: u64,
    pub session_rejects: u64,
    pub business_rejects: u64,
    /// Seconds since the last message this way, at publication.
    pub silence_seconds: Option<f64>,
}

/// One FIX session, as `/sessions` and the metrics report it.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct FixSessionJson {
    /// `SENDER->TARGET` as we send.
    pub session: String,
    pub begin_string: String,
    pub target: Option<String>,
    pub tcp: Option<TcpLink>,
    pub state: LogonState,
    pub logged_on: bool,
    pub logons: u64,
    pub logouts_us: u64,
    pub logouts_them: u64,
    pub disconnects: u64,
    pub last_logout_text: Option<String>,
    /// Logons we sent answered by a Logout (neither logons nor logouts).
    pub logons_refused: u64,
    /// The last refusal's Logout: its Text (tag 58) and when it was seen (RFC 3339, UTC).
    pub last_refusal_text: Option<String>,
    pub last_refusal_at: Option<String>,
    /// Logons we sent within the target's lockout window (`logon_lockout.within`, else
    /// 60 s) up to publication, and that window.
    pub logon_attempts_in_window: usize,
    pub logon_window_seconds: f64,
    pub heartbeat_interval_seconds: Option<u64>,
    #[serde(rename = "in")]
    pub inbound: DirectionJson,
    #[serde(rename = "out")]
    pub outbound: DirectionJson,
    pub orders_answered: u64,
    pub orders_unanswered: u64,
    /// Orders settled by a BusinessMessageReject naming them (tag 379).
    pub orders_rejected: u64,
    pub orders_pending: usize,
    /// Order-to-ack latency, seconds: the median of the last round trips (at most
    /// `tracker::RECENT_LATENCIES`) and the last one; `None` before any.
    pub ack_latency_p50_seconds: Option<f64>,
    pub ack_latency_last_seconds: Option<f64>,
    /// `wire` (kernel timestamps) or `log` (the engine log's timestamps).
    pub timed_by: &'static str,
    /// Sequence-number events by direction and kind, the last ones, resend requests.
    pub sequence: SequenceJson,
    /// Peak messages per window each way over the last minute, against the throttle.
    pub bursts: BurstsJson,
    /// What our orders came to: ExecutionReports by ExecType, rejects by reason.
    pub outcomes: Outcomes,
    /// Clock skew each way: the latest sample and how many were taken.
    pub clock_skew: ClockSkewJson,
    /// Its last TCP session's end and why (`crate::ends`), filled by `/sessions` from the TCP
    /// layer's state.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_end: Option<crate::ends::LastEnd>,
    /// Read on a tunnel's plaintext leg (`targets[].tls_tunnel`): the tunnel, and the outer
    /// session it was joined to (then `tcp` names that one).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tunnel: Option<super::tunnels::TunnelJson>,
}

/// A session's sequence forensics, as `/sessions` and the metrics report them.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct SequenceJson {
    /// Counts by direction (`in`, `out`) and kind (`reset_at_logon`, `reset`, `gap_fill`,
    /// `too_low`, `poss_dup`, `poss_resend`, `resend_storm`), every kind present.
    pub events: BTreeMap<&'static str, BTreeMap<&'static str, u64>>,
    /// The last events, oldest first, with their numbers.
    pub recent: Vec<SeqEventJson>,
    /// The last ResendRequest each way that was asked, answered or not.
    pub resend_requests: Vec<ResendJson>,
    /// ResendRequests never answered before the next one or the end of the TCP session.
    pub resend_requests_unanswered: u64,
}

/// A session's bursts, as `/sessions` and the metrics report them.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct BurstsJson {
    /// The most messages in any window of each size (`1ms`, `10ms`, `100ms`, `1s`) over the
    /// last minute, by direction (`in`, `out`).
    pub peaks: BTreeMap<&'static str, BTreeMap<&'static str, u64>>,
    /// The target's `message_limit`, if any: our outbound peak in its window over its count.
    pub throttle_utilization: Option<f64>,
    /// Rejects received that say the venue throttled us.
    pub throttle_rejects: u64,
}

impl BurstsJson {
    fn of(s: &Session, limit: Option<MessageLimit>, now: SystemTime) -> BurstsJson {
        let names = super::bursts::WINDOW_NAMES;
        let peaks_of = |d: Direction| s.bursts[usize::from(d == Direction::Out)].peaks(now);
        let peaks = [Direction::In, Direction::Out]
            .into_iter()
            .map(|d| (d.as_str(), names.into_iter().zip(peaks_of(d)).collect()))
            .collect();
        BurstsJson {
            peaks,
            throttle_utilization: limit
                .map(|l| peaks_of(Direction::Out)[l.window] as f64 / f64::from(l.count)),
            throttle_rejects: s.throttle_rejects,
        }
    }
}

/// A session's clock skew ([`super::skew`]), as `/sessions` reports it. The latest samples are
/// filled in by the FIX thread, which knows the links' RTT.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct ClockSkewJson {
    /// The latest inbound sample: their SendingTime against our receive time.
    #[serde(rename = "in")]
    pub inbound: Option<SkewJson>,
    /// The latest outbound sample: our engine's SendingTime against our kernel's send time.
    #[serde(rename = "out")]
    pub outbound: Option<SkewJson>,
    /// Samples taken each way (at most one per 100 ms), by direction.
    pub samples: BTreeMap<&'static str, u64>,
    /// Sampled messages whose SendingTime was missing or malformed, by direction.
    pub unusable_sending_times: BTreeMap<&'static str, u64>,
    /// Inbound wire samples left out of `fix_clock_skew_seconds` because the TCP layer knew no
    /// smoothed RTT for their link (yet: it lists a new session at its next poll).
    pub not_recorded_without_rtt: u64,
}

impl ClockSkewJson {
    fn of(s: &Session) -> ClockSkewJson {
        let by_dir = |f: fn(&super::skew::SkewSampler) -> u64| {
            [Direction::In, Direction::Out]
                .into_iter()
                .map(|d| (d.as_str(), f(&s.skew[usize::from(d == Direction::Out)])))
                .collect()
        };
        ClockSkewJson {
            samples: by_dir(|k| k.samples),
            unusable_sending_times: by_dir(|k| k.unusable),
            ..ClockSkewJson::default()
        }
    }
}

/// One clock-skew sample.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct SkewJson {
    /// What `fix_clock_skew_seconds` recorded: `raw_seconds` plus the RTT correction; `None`
    /// when it was not recorded (an inbound wire sample with no RTT known).
    pub seconds: Option<f64>,
    /// SendingTime minus the time the message was seen (kernel or log timestamp).
    pub raw_seconds: f64,
    /// Half the link's smoothed RTT, added to an inbound wire sample; `None` for log samples,
    /// outbound ones, and inbound wire samples with no RTT known.
    pub rtt_correction_seconds: Option<f64>,
    /// When the message was seen (RFC 3339, UTC).
    pub at: String,
}

/// One sequence event.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct SeqEventJson {
    pub kind: &'static str,
    pub direction: &'static str,
    pub seq: Option<u64>,
    /// The number expected (too low), the NewSeqNo (reset, gap fill), or the messages
    /// replayed (a storm).
    pub other: Option<u64>,
    pub at: String,
}

/// A ResendRequest.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ResendJson {
    /// `out`: we asked; `in`: they did.
    pub asked: &'static str,
    pub begin: u64,
    /// 0: up to the latest.
    pub end: u64,
    pub at: String,
    pub answered: bool,
    pub replayed: u64,
}

impl SequenceJson {
    fn of(q: &Sequence) -> SequenceJson {
        let rfc = |t| humantime::format_rfc3339_millis(t).to_string();
        let events = [Direction::In, Direction::Out]
            .into_iter()
            .map(|d| {
                let kinds = SeqKind::ALL.iter().map(|&k| (k.as_str(), q.count(d, k)));
                (d.as_str(), kinds.collect())
            })
            .collect();
        SequenceJson {
            events,
            recent: (q.recent.iter())
                .map(|e| SeqEventJson {
                    kind: e.kind.as_str(),
                    direction: e.direction.as_str(),
                    seq: e.seq,
                    other: e.other,
                    at: rfc(e.at),
                })
                .collect(),
            resend_requests: (q.resend.iter().flatten())
                .map(|r| ResendJson {
                    asked: r.asked_by.as_str(),
                    begin: r.begin,
                    end: r.end,
                    at: rfc(r.at),
                    answered: r.answered,
                    replayed: r.replayed,
                })
                .collect(),
            resend_requests_unanswered: q.resends_unanswered,
        }
    }
}

/// A target's `logon_lockout`, as `/sessions` and the metrics report it.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct LockoutJson {
    pub target: String,
    pub attempts: u32,
    pub within_seconds: f64,
}

/// The targets' lockouts, for the targets that have one.
pub fn lockouts_json(targets: &Targets, lockouts: &[Option<LogonLockout>]) -> Vec<LockoutJson> {
    (lockouts.iter().enumerate())
        .filter(|&(i, _)| i < targets.len())
        .filter_map(|(i, l)| {
            l.map(|l| LockoutJson {
                target: targets.get(i).name.clone(),
                attempts: l.attempts,
                within_seconds: l.within.as_secs_f64(),
            })
        })
        .collect()
}

/// Counts about the FIX layer itself.
#[derive(Debug, Clone, Copy, Default, Serialize, PartialEq)]
pub struct SelfStats {
    pub wire: WireStats,
    pub streams: StreamStats,
    pub logs: LogStats,
    /// Packets the kernel dropped (`PACKET_STATISTICS`); `None` without capture.
    pub capture_drops: Option<u64>,
    pub capture_packets: Option<u64>,
    pub unkeyed_messages: u64,
    pub sessions_over_cap: u64,
    /// Connections in the wire's table now (at most `wire::MAX_CONNECTIONS`).
    pub connections_followed: usize,
    /// Connections not followed because the table was full, remembered now.
    pub connections_refused: usize,
    /// Messages counted under `other` (a session's MsgType bound).
    pub msg_types_folded: u64,
    /// Orders given up because of a session's pending-order bound.
    pub orders_over_cap: u64,
}

/// The links the TCP layer lists ESTABLISHED, each with its smoothed RTT when the health
/// source measured one (netlink's `tcp_info`, at the last poll).
pub type LiveLinks = HashMap<TcpLink, Option<Duration>>;

/// The TCP layer's sessions, as the wire's table needs them ([`Wire::reconcile`]) and as the
/// clock-skew correction needs their RTT.
pub trait LiveSessions: Send + 'static {
    /// The links the TCP layer lists ESTABLISHED now, when they changed since the last call.
    fn changed(&mut self) -> Option<LiveLinks>;
    /// A link ended: the FIX layer's account of it, for the end's cause (`crate::ends`).
    fn ended(&mut self, end: LinkEnd);
    /// The sessions the TCP layer saw end since the last call, and when each ended.
    fn closed(&mut self) -> Vec<(TcpLink, SystemTime)>;
}

/// How the FIX layer agrees with the TCP layer on which connections exist.
pub struct TcpView {
    pub sessions: Box<dyn LiveSessions>,
    /// How long an entry the TCP layer never listed may stay without a segment.
    pub idle: Duration,
}

/// One published view of the FIX layer.
#[derive(Debug, Clone, Default, Serialize)]
pub struct FixState {
    pub enabled: bool,
    pub capture: bool,
    /// Why capture is not running, when it was asked for and failed.
    pub capture_error: Option<String>,
    pub logs: Vec<String>,
    /// The files the log patterns match and that are followed now.
    pub log_files: Vec<String>,
    pub sessions: Vec<FixSessionJson>,
    /// The targets with a `logon_lockout`: the thresholds the sessions' attempts are held to.
    pub logon_lockouts: Vec<LockoutJson>,
    /// TCP connections of the targets seen on the wire, with what they carry.
    pub connections: Vec<ConnView>,
    pub stats: SelfStats,
}

/// Reads the latest [`FixState`].
#[derive(Clone)]
pub struct FixReader(watch::Receiver<Arc<FixState>>);

impl FixReader {
    pub fn get(&self) -> Arc<FixState> {
        self.0.borrow().clone()
    }

    /// Resolves once the FIX layer has published a round since it started, or at `deadline`;
    /// at once when the layer is off. Its sources have then been read once: a log follower's
    /// first read starts at the end of the files there, so lines written before it are never
    /// read.
    pub async fn first_round(&self, deadline: Instant) {
        let mut rx = self.0.clone();
        let _ = tokio::time::timeout_at(deadline.into(), rx.changed()).await;
    }

    /// A reader of a state that never changes (the FIX layer off).
    pub fn disabled() -> FixReader {
        // A receiver still reads the last value after its sender is gone.
        let (_, rx) = watch::channel(Arc::new(FixState::default()));
        FixReader(rx)
    }
}

/// A histogram of seconds with `buckets`.
fn seconds(
    meter: &Meter,
    name: &'static str,
    description: &'static str,
    buckets: &[f64],
) -> opentelemetry::metrics::Histogram<f64> {
    meter
        .f64_histogram(name)
        .with_unit("s")
        .with_description(description)
        .with_boundaries(buckets.to_vec())
        .build()
}

/// The running FIX layer.
pub struct FixMonitor {
    reader: FixReader,
    /// Reloaded settings and targets, for the thread's next round ([`FixMonitor::reloads`]).
    reload: std::sync::mpsc::Sender<(FixSettings, Targets)>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// Order-to-first-fill buckets, seconds: 100 µs to an hour (a resting order fills late).
pub const FILL_BUCKETS: &[f64] = &[
    0.0001, 0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0,
    3600.0,
];

/// Clock-skew buckets, seconds, signed (their clock ahead of ours: positive): 10 µs to 10 s
/// each side of zero in steps of about half a decade (1, 3, 10...). The finest, ±10 µs and
/// ±30 µs, are below what a millisecond SendingTime can resolve but not below a microsecond
/// one; ±100 µs is MiFID II RTS 25's bound for high-frequency trading's clocks, ±1 ms for other
/// algorithmic trading's; beyond ±10 s a clock is simply wrong.
pub const SKEW_BUCKETS: &[f64] = &[
    -10.0, -3.0, -1.0, -0.3, -0.1, -0.03, -0.01, -0.003, -0.001, -0.0003, -0.0001, -0.00003,
    -0.00001, 0.0, 0.00001, 0.00003, 0.0001, 0.0003, 0.001, 0.003, 0.01, 0.03, 0.1, 0.3, 1.0, 3.0,
    10.0,
];

/// Order latency buckets, seconds: 10 µs to 10 s.
pub const LATENCY_BUCKETS: &[f64] = &[
    0.00001, 0.000025, 0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05,
    0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

fn direction_json(s: &Session, d: Direction, now: SystemTime) -> DirectionJson {
    let c = s.dir(d);
    DirectionJson {
        messages: c.messages,
        by_type: s.by_type[d.idx()].clone(),
        sequence_gaps: c.sequence_gaps,
        sequence_gap_messages: c.sequence_gap_messages,
        seq_too_low: c.seq_too_low,
        next_seq: c.next_seq,
        test_requests: c.test_requests,
        resend_requests: c.resend_requests,
        sequence_resets: c.sequence_resets,
        session_rejects: c.session_rejects,
        business_rejects: c.business_rejects,
        silence_seconds: c
            .last_seen
            .map(|t| now.duration_since(t).unwrap_or_default().as_secs_f64()),
    }
}

/// The reported view of the tracker's sessions; a session without a target is linked to one
/// by its counterparty's CompID (`targets[].comp_ids`). Logon attempts are counted over the
/// window of its target's `logon_lockout` (`lockouts`, by target id), else 60 s; its
/// outbound peak is held to its target's `message_limit` (`limits`).
pub fn sessions_json(
    tracker: &Tracker,
    targets: &Targets,
    comp_ids: &[Vec<String>],
    (lockouts, limits): (&[Option<LogonLockout>], &[Option<MessageLimit>]),
    timed_by: &'static str,
    now: SystemTime,
) -> Vec<FixSessionJson> {
    tracker
        .sessions()
        .map(|s| {
            let target = s.target.clone().or_else(|| {
                comp_ids
                    .iter()
                    .position(|ids| ids.contains(&s.key.theirs))
                    .filter(|&i| i < targets.len())
                    .map(|i| targets.get(i).name.clone())
            });
            let id = (target.as_ref())
                .and_then(|name| (0..targets.len()).find(|&i| &targets.get(i).name == name));
            let window = id
                .and_then(|i| lockouts.get(i).copied().flatten())
                .map_or(LogonLockout::DEFAULT_WINDOW, |l| l.within);
            let limit = id.and_then(|i| limits.get(i).copied().flatten());
            let refusal = s.last_refusal.as_ref();
            FixSessionJson {
                session: s.key.label(),
                begin_string: s.key.begin_string.clone(),
                target,
                tcp: s.tcp,
                state: s.state,
                logged_on: s.logged_on(),
                logons: s.logons,
                logouts_us: s.logouts_us,
                logouts_them: s.logouts_them,
                disconnects: s.disconnects,
                last_logout_text: s.last_logout_text.clone(),
                logons_refused: s.logons_refused,
                last_refusal_text: refusal.and_then(|r| r.text.clone()),
                last_refusal_at: refusal
                    .map(|r| humantime::format_rfc3339_millis(r.at).to_string()),
                logon_attempts_in_window: s.logon_attempts_within(now, window),
                logon_window_seconds: window.as_secs_f64(),
                heartbeat_interval_seconds: s.heartbeat_interval,
                inbound: direction_json(s, Direction::In, now),
                outbound: direction_json(s, Direction::Out, now),
                orders_answered: s.orders_answered,
                orders_unanswered: s.orders_unanswered,
                orders_rejected: s.orders_rejected,
                ack_latency_p50_seconds: median(s.recent_latencies.iter().copied()),
                ack_latency_last_seconds: s.recent_latencies.back().map(|d| d.as_secs_f64()),
                orders_pending: s.pending_orders(),
                timed_by: if s.tcp.is_some() { "wire" } else { timed_by },
                sequence: SequenceJson::of(&s.sequence),
                bursts: BurstsJson::of(s, limit, now),
                outcomes: s.outcomes.clone(),
                clock_skew: ClockSkewJson::of(s),
                last_end: None,
                tunnel: None,
            }
        })
        .collect()
}

/// The median of some durations, seconds (the lower middle of an even count).
fn median(d: impl Iterator<Item = Duration>) -> Option<f64> {
    let mut v: Vec<Duration> = d.collect();
    if v.is_empty() {
        return None;
    }
    v.sort_unstable();
    Some(v[(v.len() - 1) / 2].as_secs_f64())
}

/// The FIX layer's histograms: order-to-ack latency, order-to-first-fill latency, clock skew.
fn histograms(meter: &Meter) -> (Histogram<f64>, Histogram<f64>, Histogram<f64>) {
    use super::metrics::names;
    let latency = seconds(
        meter,
        names::ORDER_ACK_LATENCY,
        "Time from an order we sent to the first answer carrying its ClOrdID",
        LATENCY_BUCKETS,
    );
    let fill_latency = seconds(
        meter,
        names::ORDER_FILL_LATENCY,
        "Time from a NewOrderSingle we sent to the first ExecutionReport that fills it \
         (partially or fully; a replace keeps the order's time), per target",
        FILL_BUCKETS,
    );
    let skew = seconds(
        meter,
        names::CLOCK_SKEW,
        "Clock skew per target, sampled at most every 100 ms per session and direction: \
         in, the venue's SendingTime minus our receive time (kernel timestamp plus half \
         the link's smoothed RTT; the engine log's timestamp, uncorrected, for logs); \
         out, our engine's SendingTime minus our kernel's send time (log time for logs)",
        SKEW_BUCKETS,
    );
    (latency, fill_latency, skew)
}

impl FixMonitor {
    /// Start the FIX layer. Capture that cannot open (no `CAP_NET_RAW`) is reported in the
    /// state and the log, and the log source still runs.
    /// `tcp`, when given, keeps the wire's table to the sessions that exist ([`TcpView`]);
    /// without it entries end only at a FIN both ways or an RST.
    pub fn start(
        settings: &FixSettings,
        targets: &Targets,
        meter: &Meter,
        tcp: Option<TcpView>,
        events: crate::session_events::SessionEvents,
    ) -> FixMonitor {
        let (latency, fill_latency, skew) = histograms(meter);
        let mut capture_error = None;
        let tunnels = super::tunnels::tunnels(&settings.target_tls_tunnel);
        let auto = super::tunnels::auto_targets(&settings.target_tls_tunnel);
        #[cfg(target_os = "linux")]
        let capture = if settings.capture {
            let filtered = super::tunnels::capture_targets(targets, &tunnels);
            match super::capture::Capture::open(&filtered, 8 << 20) {
                Ok(c) => Some(c),
                Err(e) => {
                    let msg = format!(
                        "cannot open a packet socket ({e}); FIX capture needs CAP_NET_RAW. The \
                         engine's message log ([[fix.logs]]) needs no privilege"
                    );
                    tracing::warn!("{msg}");
                    capture_error = Some(msg);
                    None
                }
            }
        } else {
            None
        };
        let initial = FixState {
            enabled: true,
            capture: settings.capture,
            capture_error: capture_error.clone(),
            logs: settings.log_paths(),
            logon_lockouts: lockouts_json(targets, &settings.target_logon_lockout),
            ..FixState::default()
        };
        let (tx, rx) = watch::channel(Arc::new(initial));
        let stop = Arc::new(AtomicBool::new(false));
        let (reload, reloads) = std::sync::mpsc::channel();
        let mut worker = Worker {
            settings: settings.clone(),
            targets: targets.clone(),
            joiner: (!tunnels.is_empty() || !auto.is_empty())
                .then(|| super::tunnels::Joiner::new().with_auto(auto.clone())),
            wire: Wire::new(targets.clone(), StreamLimits::default())
                .with_tunnels(tunnels)
                .watch_for_tunnels(&auto),
            tracker: Tracker::new(Limits::default()),
            follower: (!settings.logs.is_empty())
                .then(|| LogFollower::new(settings.log_paths(), settings.our_comp_ids.clone())),
            latency,
            fill_latency,
            skew,
            latest_skew: HashMap::new(),
            srtt: HashMap::new(),
            capture_error,
            tx,
            tcp,
            live: HashSet::new(),
            warned: HashSet::new(),
            events,
            announcer: super::events::Announcer::default(),
            reloads,
        };
        let s = stop.clone();
        let thread = std::thread::Builder::new()
            .name("fix-monitor-fix".into())
            .spawn(move || {
                #[cfg(target_os = "linux")]
                worker.run(capture, &s);
            })
            .expect("spawning the FIX thread");
        FixMonitor {
            reader: FixReader(rx),
            reload,
            stop,
            thread: Some(thread),
        }
    }

    pub fn reader(&self) -> FixReader {
        self.reader.clone()
    }

    /// Where reloaded settings go ([`FixReloads`]).
    pub fn reloads(&self) -> FixReloads {
        FixReloads(self.reload.clone())
    }

    /// Stop the thread and wait for it (at most one round).
    pub fn stop(mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Hands a running FIX layer reloaded settings.
#[derive(Clone)]
pub struct FixReloads(std::sync::mpsc::Sender<(FixSettings, Targets)>);

impl FixReloads {
    /// Runs on reloaded settings and targets from the thread's next round: its sessions, their
    /// counts and every stream it follows stay (a stream of a target that stays goes on where
    /// it was); see `Worker::reconfigure`. Whether capture is on, and the tunnels, are not
    /// changed by a reload (the caller refuses such a change).
    pub fn reconfigure(&self, settings: FixSettings, targets: Targets) {
        // The thread gone (stopping): nothing to change.
        let _ = self.0.send((settings, targets));
    }
}

impl Drop for FixMonitor {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

/// The order latency histogram's attributes, by (target, session, request).
type AttrsCache = HashMap<(String, String, &'static str), Vec<KeyValue>>;

struct Worker {
    settings: FixSettings,
    targets: Targets,
    wire: Wire,
    /// Joins tunnels' plaintext legs to their outer sessions (`None`: no tunnel configured).
    joiner: Option<super::tunnels::Joiner>,
    tracker: Tracker,
    follower: Option<LogFollower>,
    latency: Histogram<f64>,
    fill_latency: Histogram<f64>,
    /// `fix_clock_skew_seconds`, recorded as samples come.
    skew: Histogram<f64>,
    /// Each session's latest skew samples and what was left out (by its label; bounded by the
    /// tracker's sessions).
    latest_skew: HashMap<String, ClockSkewJson>,
    /// The smoothed RTT of each live link the TCP layer measured one for, as last read.
    srtt: HashMap<TcpLink, Duration>,
    capture_error: Option<String>,
    tx: watch::Sender<Arc<FixState>>,
    tcp: Option<TcpView>,
    /// The TCP layer's live sessions, as last read.
    live: HashSet<TcpLink>,
    /// The bounds already said to be hit (each is logged once).
    warned: HashSet<&'static str>,
    /// Where logons, logouts, gaps and rejects go as session events (`fix::events`).
    events: crate::session_events::SessionEvents,
    announcer: super::events::Announcer,
    /// Reloaded settings and targets ([`FixReloads::reconfigure`]).
    reloads: std::sync::mpsc::Receiver<(FixSettings, Targets)>,
}

impl Worker {
    #[cfg(target_os = "linux")]
    fn run(&mut self, mut capture: Option<super::capture::Capture>, stop: &AtomicBool) {
        let mut last_round = Instant::now() - ROUND;
        let mut attrs_cache = AttrsCache::new();
        while !stop.load(Ordering::SeqCst) {
            let mut events = Vec::new();
            match &mut capture {
                Some(c) => {
                    let (wire, tracker) = (&mut self.wire, &mut self.tracker);
                    let (joiner, mut found) = (&mut self.joiner, false);
                    if let Err(e) = c.recv_batch(ROUND / 5, 4096, |p, at| {
                        events.extend(wire.packet(p, at, tracker));
                        // A tunnel's new connection: joined while its sockets are open.
                        if let (Some(j), true) = (joiner.as_mut(), wire.take_tunnel_news()) {
                            found |= j.round(wire, SystemTime::now(), true);
                        }
                    }) {
                        tracing::warn!("FIX capture: {e}");
                        std::thread::sleep(ROUND / 5);
                    }
                    if found {
                        self.refilter(c);
                    }
                }
                None => std::thread::sleep(ROUND / 5),
            }
            if last_round.elapsed() >= ROUND {
                last_round = Instant::now();
                let now = SystemTime::now();
                while let Ok((settings, targets)) = self.reloads.try_recv() {
                    self.reconfigure(settings, targets, now, &mut events);
                    if let Some(c) = capture.as_mut() {
                        self.refilter(c);
                    }
                }
                if let Some(f) = &mut self.follower {
                    for r in f.poll(now) {
                        self.tracker.observe_into(
                            &r.msg,
                            r.dir,
                            r.at,
                            &Origin::default(),
                            &mut events,
                        );
                    }
                }
                events.extend(self.wire.tick(now, &mut self.tracker));
                let found =
                    (self.joiner.as_mut()).is_some_and(|j| j.round(&mut self.wire, now, false));
                if let (true, Some(c)) = (found, capture.as_mut()) {
                    self.refilter(c);
                }
                if let Some(tcp) = &mut self.tcp {
                    if let Some(live) = tcp.sessions.changed() {
                        self.live = live.keys().copied().collect();
                        self.srtt = (live.into_iter())
                            .filter_map(|(link, rtt)| Some((link, rtt?)))
                            .collect();
                    }
                    // The engine logs' sessions (their lines up to now read above), before
                    // the wire lets its links go.
                    let closed = tcp.sessions.closed();
                    let ends = self.log_ends(&closed);
                    events.extend(ends.into_iter().map(|e| Event::LinkEnded(Box::new(e))));
                }
                if let Some(tcp) = &self.tcp {
                    events.extend(self.wire.reconcile(
                        &self.live,
                        now,
                        tcp.idle,
                        &mut self.tracker,
                    ));
                }
                self.tracker.expire(now);
                let kernel = capture.as_mut().and_then(|c| c.kernel_stats().ok());
                self.publish(now, kernel);
            }
            for e in events {
                self.handle(e, &mut attrs_cache);
            }
        }
    }

    /// Runs on reloaded `settings` and `targets`: the wire's streams of targets that stay go
    /// on (remapped by name), the others are let go; the engine logs are read to now under the
    /// old settings, then followed anew (from their ends) if their paths or our CompIDs
    /// changed. The tracker and its sessions stay as they are.
    fn reconfigure(
        &mut self,
        settings: FixSettings,
        targets: Targets,
        now: SystemTime,
        events: &mut Vec<Event>,
    ) {
        let remap = self.targets.remap(&targets);
        let logs_changed = (settings.log_paths(), &settings.our_comp_ids)
            != (self.settings.log_paths(), &self.settings.our_comp_ids);
        if let (true, Some(f)) = (logs_changed, &mut self.follower) {
            for r in f.poll(now) {
                let origin = Origin::default();
                self.tracker
                    .observe_into(&r.msg, r.dir, r.at, &origin, events);
            }
        }
        if logs_changed {
            // Its counts go on: they are the counters' values.
            let stats = self.follower.as_ref().map(|f| f.stats);
            self.follower = (!settings.logs.is_empty()).then(|| {
                let mut f = LogFollower::new(settings.log_paths(), settings.our_comp_ids.clone());
                f.stats = stats.unwrap_or_default();
                f
            });
        }
        self.wire.retarget(targets.clone(), &remap);
        self.settings = settings;
        self.targets = targets;
        tracing::info!(
            logs = self.settings.logs.len(),
            "FIX layer: running on the reloaded configuration"
        );
    }

    /// Lets the legs of every tunnel, found ones too, through the packet filter, then says
    /// which were found.
    #[cfg(target_os = "linux")]
    fn refilter(&mut self, capture: &mut super::capture::Capture) {
        let targets = super::tunnels::capture_targets(&self.targets, self.wire.tunnels());
        if let Err(e) = capture.set_filter(&targets) {
            tracing::warn!("FIX capture: a tunnel was found, but not its filter: {e}");
        }
        if let Some(j) = &mut self.joiner {
            j.announce(&self.targets);
        }
    }

    /// One tracker event: a round trip or a first fill timed, a link's end handed on.
    fn handle(&mut self, e: Event, attrs_cache: &mut AttrsCache) {
        let (session, target, request, latency) = match e {
            Event::OrderAnswered {
                session,
                target,
                request,
                latency,
            } => (session, target, Some(request), latency),
            Event::OrderFilled {
                session,
                target,
                latency,
            } => (session, target, None, latency),
            Event::LinkEnded(end) => {
                if let Some(tcp) = &mut self.tcp {
                    tcp.sessions.ended(*end);
                }
                return;
            }
            Event::ClockSkew {
                session,
                target,
                direction,
                skew_ns,
                at,
                tcp,
            } => {
                let target = target.or_else(|| self.target_of(&session.theirs));
                self.clock_skew(&session, target, direction, (skew_ns, at), tcp);
                return;
            }
        };
        let target = target
            .or_else(|| self.target_of(&session.theirs))
            .unwrap_or_default();
        let Some(request) = request else {
            // First fills are per target only (bounded, as the issue of order outcomes asks).
            let attrs = [KeyValue::new(super::metrics::attrs::TARGET, target)];
            self.fill_latency.record(latency.as_secs_f64(), &attrs);
            return;
        };
        let key = (target, session.label(), request.as_str());
        let attrs = attrs_cache.entry(key.clone()).or_insert_with(|| {
            vec![
                KeyValue::new(super::metrics::attrs::TARGET, key.0.clone()),
                KeyValue::new(super::metrics::attrs::SESSION, key.1.clone()),
                KeyValue::new(super::metrics::attrs::REQUEST, key.2),
            ]
        });
        self.latency.record(latency.as_secs_f64(), attrs);
    }

    /// One clock-skew sample (`skew_ns` seen `at`): an inbound one seen on the wire gets half
    /// its link's smoothed RTT added (the one-way delay, assuming a symmetric path) and is
    /// recorded only when that RTT is known; an inbound log sample is recorded as the log
    /// timed it (no RTT correction: the engine stamped its line after the network and its
    /// own reading); an outbound one as it is (both times are ours).
    fn clock_skew(
        &mut self,
        session: &super::tracker::SessionKey,
        target: Option<String>,
        direction: Direction,
        (skew_ns, at): (i64, SystemTime),
        tcp: Option<TcpLink>,
    ) {
        let raw = skew_ns as f64 / 1e9;
        let correction = match (direction, tcp) {
            (Direction::In, Some(link)) => {
                Some(self.srtt.get(&link).map(|r| r.as_secs_f64() / 2.0))
            }
            _ => None,
        };
        let seconds = match correction {
            Some(Some(c)) => Some(raw + c),
            Some(None) => None,
            None => Some(raw),
        };
        let latest = self.latest_skew.entry(session.label()).or_default();
        if let Some(v) = seconds {
            let attrs = [
                KeyValue::new(super::metrics::attrs::TARGET, target.unwrap_or_default()),
                KeyValue::new(super::metrics::attrs::DIRECTION, direction.as_str()),
            ];
            self.skew.record(v, &attrs);
        } else {
            latest.not_recorded_without_rtt += 1;
        }
        let sample = SkewJson {
            seconds,
            raw_seconds: raw,
            rtt_correction_seconds: correction.flatten(),
            at: humantime::format_rfc3339_micros(at).to_string(),
        };
        match direction {
            Direction::In => latest.inbound = Some(sample),
            Direction::Out => latest.outbound = Some(sample),
        }
    }

    /// Say, once each, that a bound of the FIX layer was reached: what it costs is counted
    /// from then on (see `metrics`).
    fn warn_bounds(&mut self, s: &SelfStats) {
        for (hit, name, what) in bound_hits(s) {
            if hit && self.warned.insert(name) {
                tracing::warn!(bound = name, "FIX layer: {what}");
            }
        }
    }

    /// The ends of TCP sessions the wire did not follow, for the engine logs' sessions: a link
    /// of a target that exactly one log-read session belongs to gets that session's evidence;
    /// with several, which one ran on it is not known, and the end gets none.
    fn log_ends(&self, closed: &[(TcpLink, SystemTime)]) -> Vec<LinkEnd> {
        if self.follower.is_none() {
            return Vec::new();
        }
        let mut ends = Vec::new();
        for (link, at) in closed.iter().filter(|(l, _)| !self.wire.follows(l)) {
            let Some(t) = self.targets.classify(&link.local, &link.remote) else {
                continue;
            };
            let name = &self.targets.get(t).name;
            let candidates: Vec<_> = (self.tracker.sessions())
                .filter(|s| s.tcp.is_none())
                .filter(|s| {
                    let target = s.target.clone().or_else(|| self.target_of(&s.key.theirs));
                    target.as_ref() == Some(name)
                })
                .map(|s| s.key.clone())
                .collect();
            if let [key] = &candidates[..] {
                ends.extend(self.tracker.log_link_closed(key, *link, *at));
            }
        }
        ends
    }

    fn target_of(&self, theirs: &str) -> Option<String> {
        self.settings
            .target_comp_ids
            .iter()
            .position(|ids| ids.iter().any(|i| i == theirs))
            .filter(|&i| i < self.targets.len())
            .map(|i| self.targets.get(i).name.clone())
    }

    #[cfg(target_os = "linux")]
    fn publish(&mut self, now: SystemTime, kernel: Option<super::capture::CaptureStats>) {
        let timed_by = "log";
        let mut state = FixState {
            enabled: true,
            capture: self.settings.capture,
            capture_error: self.capture_error.clone(),
            logs: self.settings.log_paths(),
            log_files: self
                .follower
                .as_ref()
                .map(|f| f.paths().iter().map(|p| p.display().to_string()).collect())
                .unwrap_or_default(),
            sessions: sessions_json(
                &self.tracker,
                &self.targets,
                &self.settings.target_comp_ids,
                (
                    &self.settings.target_logon_lockout,
                    &self.settings.target_message_limit,
                ),
                timed_by,
                now,
            ),
            logon_lockouts: lockouts_json(&self.targets, &self.settings.target_logon_lockout),
            connections: self.wire.connections(),
            stats: SelfStats {
                wire: self.wire.stats,
                streams: self.wire.stream_stats(),
                logs: self.follower.as_ref().map(|f| f.stats).unwrap_or_default(),
                capture_drops: kernel.map(|k| k.drops),
                capture_packets: kernel.map(|k| k.packets),
                unkeyed_messages: self.tracker.unkeyed,
                sessions_over_cap: self.tracker.over_cap,
                connections_followed: self.wire.followed(),
                connections_refused: self.wire.refused(),
                msg_types_folded: self.tracker.msg_types_folded,
                orders_over_cap: self.tracker.orders_over_cap,
            },
        };
        if let Some(j) = &mut self.joiner {
            j.annotate(&mut state.sessions);
        }
        for s in &mut state.sessions {
            if let Some(l) = self.latest_skew.get(&s.session) {
                s.clock_skew.inbound.clone_from(&l.inbound);
                s.clock_skew.outbound.clone_from(&l.outbound);
                s.clock_skew.not_recorded_without_rtt = l.not_recorded_without_rtt;
            }
        }
        self.warn_bounds(&state.stats);
        self.announcer.round(&state.sessions, now, &self.events);
        let _ = self.tx.send(Arc::new(state));
    }
}

/// Each bound of the FIX layer: whether it was hit, its name (the `limit` attribute of
/// `fix_monitor_fix_limit_hits`) and what hitting it means.
pub fn bound_hits(s: &SelfStats) -> [(bool, &'static str, &'static str); 6] {
    [
        (
            s.wire.not_followed > 0,
            "connections",
            "the capture's connection table is full (wire::MAX_CONNECTIONS): new connections \
             are not followed (fix_monitor_capture_connections_not_followed_total)",
        ),
        (
            s.sessions_over_cap > 0,
            "sessions",
            "the FIX session table is full: messages of new FIX sessions are counted, not \
             tracked (fix_monitor_fix_limit_hits_total{limit=\"sessions\"})",
        ),
        (
            s.msg_types_folded > 0,
            "msg_types",
            "a FIX session has the most MsgTypes kept one way: further types are counted \
             under msg_type=\"other\"",
        ),
        (
            s.orders_over_cap > 0,
            "pending_orders",
            "a FIX session has the most orders awaiting an answer: the oldest are given up \
             as unanswered",
        ),
        (
            s.logs.lines_too_long > 0,
            "log_line",
            "an engine-log line longer than the longest kept (1 MiB) was dropped",
        ),
        (
            s.logs.files_not_followed > 0,
            "log_files",
            "the log patterns match more files than are followed at once (logs::MAX_FILES): \
             the rest wait until a followed file goes",
        ),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `first_round` waits for a published round (not the initial state), and not at all
    /// when the layer is off or a round was published before it was asked.
    #[tokio::test]
    async fn first_round_waits_for_a_published_round() {
        let (tx, rx) = watch::channel(Arc::new(FixState::default()));
        let reader = FixReader(rx);
        let t0 = Instant::now();
        reader.first_round(t0 + Duration::from_millis(200)).await;
        assert!(t0.elapsed() >= Duration::from_millis(200), "no round yet");
        let publisher = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(50));
            tx.send(Arc::new(FixState::default())).unwrap();
            tx
        });
        let t1 = Instant::now();
        reader.first_round(t1 + Duration::from_secs(10)).await;
        assert!(t1.elapsed() < Duration::from_secs(5), "the round came");
        let _tx = publisher.join().unwrap();
        let t2 = Instant::now();
        reader.first_round(t2 + Duration::from_secs(10)).await;
        FixReader::disabled()
            .first_round(t2 + Duration::from_secs(10))
            .await;
        assert!(
            t2.elapsed() < Duration::from_secs(5),
            "already published; off"
        );
    }
}
