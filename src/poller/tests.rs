//! The loop's rules, driven by a scripted source and a manual clock: no root, no sockets.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::mpsc;

use opentelemetry::metrics::MeterProvider;

use super::*;
use crate::source::{PollNews, SocketEntry, SourceError, SourceKind, TcpState};
use crate::state::{Meta, Publisher, StateReader};
use crate::target::{Target, Targets};

type Step = Result<Vec<SocketEntry>, String>;

/// A source that plays a script, one step per poll, noting when (on the manual clock) each
/// poll happened. When the script runs out it asks the loop to stop and repeats its last step.
struct Script {
    steps: VecDeque<Step>,
    last: Step,
    clock: ManualClock,
    /// Polls taken, by clock time; a step may also move the clock (a slow poll).
    polled_at: Arc<Mutex<Vec<Timestamp>>>,
    slow: Option<(usize, Duration)>,
    stop: Option<mpsc::Sender<Input>>,
    /// What each poll says it brought (everything once the list runs out).
    news: Arc<Mutex<VecDeque<PollNews>>>,
    last_news: PollNews,
    /// What the source says it counted (as the eBPF source's ring losses and dumps).
    counts: Arc<Mutex<crate::source::EventCounts>>,
}

impl Source for Script {
    fn kind(&self) -> SourceKind {
        SourceKind::Procfs
    }

    fn capabilities(&self) -> crate::source::Capabilities {
        crate::source::procfs::ProcfsSource::CAPABILITIES
    }

    /// As procfs: the id is the inode.
    fn inode(&self, id: u64) -> Option<u64> {
        Some(id)
    }

    fn news(&self) -> PollNews {
        self.last_news
    }

    fn event_counts(&self) -> crate::source::EventCounts {
        *self.counts.lock().unwrap()
    }

    fn poll(&mut self, out: &mut Vec<SocketEntry>) -> Result<(), SourceError> {
        self.last_news = self
            .news
            .lock()
            .unwrap()
            .pop_front()
            .unwrap_or(PollNews::EVERYTHING);
        let mut polled = self.polled_at.lock().unwrap();
        polled.push(self.clock.now());
        if let Some((n, d)) = self.slow {
            if polled.len() == n {
                self.clock.advance(d);
            }
        }
        drop(polled);
        let step = match self.steps.pop_front() {
            Some(s) => s,
            None => {
                if let Some(stop) = &self.stop {
                    let _ = stop.send(Input::Stop);
                }
                self.last.clone()
            }
        };
        self.last = step.clone();
        match step {
            Ok(s) => {
                out.clone_from(&s);
                Ok(())
            }
            Err(detail) => Err(SourceError::Parse {
                what: "script",
                detail,
            }),
        }
    }
}

fn sock(port: u16, id: u64) -> SocketEntry {
    SocketEntry {
        local: SocketAddr::from(([10, 0, 0, 1], port)),
        remote: "10.0.0.5:9876".parse().unwrap(),
        state: TcpState::Established,
        id,
        health: None,
    }
}

fn targets() -> Targets {
    Targets::new(vec![Target::test("10.0.0.5/32", Some(9876), None)])
}

pub(crate) struct Rig {
    pub(crate) poller: Poller,
    pub(crate) clock: ManualClock,
    pub(crate) state: StateReader,
    pub(crate) polled_at: Arc<Mutex<Vec<Timestamp>>>,
    pub(crate) news: Arc<Mutex<VecDeque<PollNews>>>,
    pub(crate) counts: Arc<Mutex<crate::source::EventCounts>>,
    registry: prometheus::Registry,
    _provider: opentelemetry_sdk::metrics::SdkMeterProvider,
}

fn rig(
    targets: Targets,
    t0: Timestamp,
    steps: Vec<Step>,
    stop: Option<mpsc::Sender<Input>>,
) -> Rig {
    rig_with(targets, t0, steps, stop, None, |p| Box::new(p))
}

fn rig_with(
    targets: Targets,
    t0: Timestamp,
    steps: Vec<Step>,
    stop: Option<mpsc::Sender<Input>>,
    slow: Option<(usize, Duration)>,
    publish: impl FnOnce(Publisher) -> Box<dyn Publish>,
) -> Rig {
    let clock = ManualClock::new(t0);
    let polled_at = Arc::default();
    let news = Arc::default();
    let counts = Arc::default();
    let source = Script {
        steps: steps.into(),
        last: Ok(Vec::new()),
        clock: clock.clone(),
        polled_at: Arc::clone(&polled_at),
        slow,
        stop,
        news: Arc::clone(&news),
        last_news: PollNews::EVERYTHING,
        counts: Arc::clone(&counts),
    };
    let (exporter, registry) = crate::export::prometheus::reader("h").unwrap();
    let provider = opentelemetry_sdk::metrics::SdkMeterProvider::builder()
        .with_reader(exporter)
        .build();
    let meter = provider.meter(crate::instruments::names::METER);
    let instruments = Instruments::new(
        &meter,
        &targets,
        SourceKind::Procfs,
        crate::source::procfs::ProcfsSource::CAPABILITIES,
    );
    let initial = State::initial(Meta {
        source_reason: None,
        host: "h".into(),
        source: SourceKind::Procfs,
        capabilities: crate::source::procfs::ProcfsSource::CAPABILITIES,
        interval: Duration::from_secs(1),
        started: t0,
        targets,
        events: crate::source::events::Mode::Polling {
            reason: "a scripted source".into(),
        },
        schedules: Vec::new(),
    });
    let (publisher, state) = Publisher::new(initial.clone());
    let (events, _) = tokio::sync::broadcast::channel(16);
    let poller = Poller::new(
        Box::new(source),
        instruments,
        publish(publisher),
        initial,
        events,
    );
    Rig {
        poller,
        clock,
        state,
        polled_at,
        news,
        counts,
        registry,
        _provider: provider,
    }
}

/// The published state after one poll of each snapshot, each at `t0` plus its offset (for the
/// console's tests).
pub(crate) fn state_after(
    targets: Targets,
    t0: Timestamp,
    polls: &[(Duration, Vec<SocketEntry>)],
) -> State {
    let steps = polls.iter().map(|(_, s)| Ok(s.clone())).collect();
    let mut r = rig(targets, t0, steps, None);
    let mut at = Duration::ZERO;
    for (offset, _) in polls {
        r.clock.advance(offset.saturating_sub(at));
        at = *offset;
        r.poller.tick(&r.clock);
    }
    (*r.state.get()).clone()
}

#[test]
fn a_failed_poll_is_not_a_close() {
    let (a, b) = (sock(5000, 1), sock(5001, 2));
    let t0 = Timestamp::now();
    let mut r = rig(
        targets(),
        t0,
        vec![
            Ok(vec![a, b]),
            Err("netlink went away".into()),
            Ok(vec![a, b]),
        ],
        None,
    );
    r.poller.tick(&r.clock);
    let first = r.state.get();
    assert_eq!((first.generation, first.active.len()), (1, 2));

    r.clock.advance(Duration::from_secs(1));
    r.poller.tick(&r.clock);
    let failed = r.state.get();
    assert_eq!(failed.generation, 2);
    assert_eq!(
        failed.active, first.active,
        "a failed poll keeps the sessions"
    );
    assert_eq!(failed.stats[0].closed, 0);
    assert_eq!(failed.health.consecutive_failures, 1);
    assert_eq!(failed.health.last_success, Some(t0));
    assert!(failed
        .health
        .last_error
        .as_deref()
        .unwrap()
        .contains("netlink went away"));

    r.clock.advance(Duration::from_secs(1));
    r.poller.tick(&r.clock);
    let back = r.state.get();
    assert_eq!(back.health.consecutive_failures, 0);
    assert_eq!(back.health.polls, 3);
    assert_eq!((back.stats[0].opened, back.stats[0].closed), (2, 0));
}

#[test]
fn polling_closes_are_counted_by_unknown_and_no_other_by_series_exists() {
    let t0 = Timestamp::now();
    let steps = vec![Ok(vec![sock(5000, 1), sock(5001, 2)]), Ok(vec![])];
    let mut r = rig(targets(), t0, steps, None);
    let closed = |r: &Rig| -> Vec<String> {
        crate::export::prometheus::encode(&r.registry, 0)
            .unwrap()
            .lines()
            .filter(|l| l.starts_with("fix_connections_closed_total{"))
            .map(|l| {
                let by = l.split("by=\"").nth(1).unwrap().split('"').next().unwrap();
                format!("{by} {}", l.rsplit(' ').next().unwrap())
            })
            .collect()
    };
    r.poller.tick(&r.clock);
    // Before any close: the one series polling can fill, at 0 (no local/remote/reset zeros
    // that would pass for measurements).
    assert_eq!(closed(&r), ["unknown 0"]);
    r.clock.advance(Duration::from_secs(1));
    r.poller.tick(&r.clock);
    assert_eq!(closed(&r), ["unknown 2"]);
    assert!(r.state.get().closed.iter().all(|s| s.closed_by.is_none()));
}

#[test]
fn closed_sessions_are_kept_newest_last_with_their_lifetimes() {
    let t0 = Timestamp::now();
    let steps = vec![
        Ok(vec![sock(5000, 1), sock(5001, 2)]),
        Ok(vec![sock(5001, 2)]),
        Ok(vec![]),
    ];
    let mut r = rig(targets(), t0, steps, None);
    for _ in 0..3 {
        r.poller.tick(&r.clock);
        r.clock.advance(Duration::from_secs(2));
    }
    let s = r.state.get();
    let lived: Vec<_> = s
        .closed
        .iter()
        .map(|c| (c.local.port(), c.life.unwrap().ended.unwrap().duration))
        .collect();
    assert_eq!(
        lived,
        [
            (5000, Duration::from_secs(2)),
            (5001, Duration::from_secs(4))
        ]
    );
    assert!(s.active.is_empty());
    assert_eq!(s.peak, 2);
}

/// A publisher that, at the moment a state is published, reads what `/metrics` would serve:
/// it must already carry that state's numbers (the cached body is keyed on the generation).
struct Checking {
    inner: Publisher,
    registry: Arc<Mutex<Option<prometheus::Registry>>>,
    checked: Arc<Mutex<Vec<(u64, u64, u64)>>>,
}

impl Publish for Checking {
    fn publish(&mut self, state: Arc<State>) {
        let registry = self.registry.lock().unwrap();
        let text = crate::export::prometheus::encode(registry.as_ref().unwrap(), 0).unwrap();
        let value = |name: &str| -> u64 {
            text.lines()
                .find(|l| l.starts_with(&format!("{name}{{")))
                .and_then(|l| l.rsplit(' ').next())
                .and_then(|v| v.parse::<f64>().ok())
                .unwrap_or_else(|| panic!("{name} missing from:\n{text}")) as u64
        };
        let scraped = (
            value("fix_connections_active"),
            value("fix_connections_total"),
        );
        assert_eq!(
            scraped,
            (state.stats[0].active, state.stats[0].opened),
            "generation {} was published before the instruments had its values",
            state.generation
        );
        self.checked
            .lock()
            .unwrap()
            .push((state.generation, scraped.0, scraped.1));
        self.inner.publish(state);
    }
}

#[test]
fn a_state_is_published_only_after_the_instruments_carry_it() {
    let t0 = Timestamp::now();
    let steps: Vec<Step> = (1..=4u16)
        .map(|n| Ok((0..n).map(|i| sock(5000 + i, u64::from(i))).collect()))
        .collect();
    let registry = Arc::new(Mutex::new(None));
    let checked = Arc::new(Mutex::new(Vec::new()));
    let (reg, chk) = (registry.clone(), checked.clone());
    let mut r = rig_with(targets(), t0, steps, None, None, move |inner| {
        Box::new(Checking {
            inner,
            registry: reg,
            checked: chk,
        })
    });
    *registry.lock().unwrap() = Some(r.registry.clone());
    for _ in 0..4 {
        r.poller.tick(&r.clock);
        r.clock.advance(Duration::from_secs(1));
    }
    assert_eq!(
        *checked.lock().unwrap(),
        [(1, 1, 1), (2, 2, 2), (3, 3, 3), (4, 4, 4)]
    );
}

#[test]
fn the_loop_keeps_its_rate_and_a_late_poll_restarts_the_schedule() {
    let t0 = Timestamp::now();
    let (tx, rx) = mpsc::channel();
    let steps = (0..6).map(|_| Ok(vec![sock(5000, 1)])).collect();
    // The third poll takes 2.5 s.
    let r = rig_with(
        targets(),
        t0,
        steps,
        Some(tx),
        Some((3, Duration::from_millis(2500))),
        |p| Box::new(p),
    );
    run(r.poller, &r.clock, Duration::from_secs(1), rx);
    let at: Vec<Duration> = r
        .polled_at
        .lock()
        .unwrap()
        .iter()
        .map(|t| t.mono - t0.mono)
        .collect();
    let ms = |v: &[u64]| {
        v.iter()
            .map(|&m| Duration::from_millis(m))
            .collect::<Vec<_>>()
    };
    // 0, 1, 2 on schedule; the slow one ends at 4.5 s, so the next is one interval later, not
    // at once to catch up; the seventh poll finds the script empty and stops the loop.
    assert_eq!(at, ms(&[0, 1000, 2000, 5500, 6500, 7500, 8500]));
    assert_eq!(r.state.get().health.polls, 7);
}

#[test]
fn the_loop_stops_when_its_inputs_are_gone() {
    let t0 = Timestamp::now();
    let (tx, rx) = mpsc::channel::<Input>();
    let r = rig(targets(), t0, vec![], None);
    drop(tx);
    run(r.poller, &r.clock, Duration::from_secs(1), rx);
    assert_eq!(
        r.state.get().generation,
        0,
        "no poll after the inputs closed"
    );
}

/// For the event tests: a socket of the scripted source's target.
pub(crate) fn sock_for_events(port: u16, id: u64) -> SocketEntry {
    sock(port, id)
}

/// For the event tests: a rig with the scripted source.
pub(crate) fn rig_for_events(t0: Timestamp, steps: Vec<Step>) -> Rig {
    rig(targets(), t0, steps, None)
}

/// `poll.process_lookup` (a fake `/proc`): a walk only on a poll that found new sessions, the
/// owner kept with the session while it lives and on its close, none for a socket no process
/// holds.
#[cfg(target_os = "linux")]
#[test]
fn process_lookup_walks_only_for_new_sessions_and_keeps_the_owner_until_the_close() {
    let proc_root = tempfile::tempdir().unwrap();
    let gw = proc_root.path().join("100");
    std::fs::create_dir_all(gw.join("fd")).unwrap();
    std::fs::write(gw.join("comm"), "fix-gateway\n").unwrap();
    std::os::unix::fs::symlink("socket:[1]", gw.join("fd").join("7")).unwrap();
    let t0 = Timestamp::now();
    let (a, b) = (sock(5000, 1), sock(5001, 2));
    let steps = vec![Ok(vec![a]), Ok(vec![a]), Ok(vec![a, b]), Ok(vec![])];
    let mut r = rig(targets(), t0, steps, None);
    r.poller = r.poller.with_process_lookup(proc_root.path());
    let scans = |r: &Rig| r.state.get().health.process_lookup.clone().unwrap().scans;
    let gateway = Some(crate::source::Process {
        pid: 100,
        comm: "fix-gateway".into(),
    });

    r.poller.tick(&r.clock);
    let s = r.state.get();
    assert_eq!(s.active[0].process, gateway);
    assert_eq!(scans(&r), 1);
    r.poller.tick(&r.clock);
    assert_eq!(scans(&r), 1, "no new session, no walk");
    r.poller.tick(&r.clock);
    let s = r.state.get();
    assert_eq!(scans(&r), 2);
    assert_eq!(
        s.active
            .iter()
            .map(|s| s.process.clone())
            .collect::<Vec<_>>(),
        [gateway.clone(), None],
        "inode 2 is nobody's"
    );
    r.poller.tick(&r.clock);
    let s = r.state.get();
    // Both close in one poll, in no set order.
    let mut closed: Vec<_> = s
        .closed
        .iter()
        .map(|s| (s.local.port(), s.process.clone()))
        .collect();
    closed.sort_by_key(|(port, _)| *port);
    assert_eq!(closed, [(5000, gateway), (5001, None)]);
    assert!(r.poller.processes.is_empty(), "forgotten with the session");
    let health = s.health.process_lookup.clone().unwrap();
    assert!(health.available && health.unreadable_processes == 0 && health.reason.is_none());
}

/// A source that hands over scripted events once (as the eBPF source reads them from its
/// tracepoint), with empty snapshots.
struct Transitions(Vec<crate::tracker::SocketEvent>);

impl Source for Transitions {
    fn kind(&self) -> SourceKind {
        SourceKind::Ebpf
    }

    fn capabilities(&self) -> crate::source::Capabilities {
        crate::source::ebpf::EbpfSource::CAPABILITIES
    }

    fn poll(&mut self, out: &mut Vec<SocketEntry>) -> Result<(), SourceError> {
        out.clear();
        Ok(())
    }

    fn take_events(&mut self, _now: Timestamp, out: &mut Vec<crate::tracker::SocketEvent>) {
        out.append(&mut self.0);
    }
}

/// What the eBPF source makes of a transition `ms_ago` before `t0` (`Transition::to_event`):
/// 10.0.0.1:`port` to the target 10.0.0.5:9876.
fn transition(
    t0: Timestamp,
    ms_ago: u64,
    port: u16,
    kind: crate::tracker::SocketEventKind,
    closed_by: Option<crate::source::ClosedBy>,
) -> crate::tracker::SocketEvent {
    crate::tracker::SocketEvent {
        at: Timestamp {
            mono: t0.mono - Duration::from_millis(ms_ago),
            wall: t0.wall - Duration::from_millis(ms_ago),
        },
        kind,
        id: 0,
        local: SocketAddr::from(([10, 0, 0, 1], port)),
        remote: "10.0.0.5:9876".parse().unwrap(),
        partial: false,
        established: Some(true),
        info: None,
        closed_by,
        process: None,
        cause: None,
    }
}

/// A loop in eBPF mode over `script` (handed over at the first tick), and its state.
fn transitions_poller(
    t0: Timestamp,
    script: Vec<crate::tracker::SocketEvent>,
    instruments: Instruments,
) -> (Poller, StateReader) {
    let initial = State::initial(Meta {
        source_reason: None,
        host: "h".into(),
        source: SourceKind::Ebpf,
        capabilities: crate::source::ebpf::EbpfSource::CAPABILITIES,
        interval: Duration::from_secs(1),
        started: t0,
        targets: targets(),
        events: crate::source::events::Mode::Polling {
            reason: "a scripted source".into(),
        },
        schedules: Vec::new(),
    });
    let (publisher, state) = Publisher::new(initial.clone());
    let (events, _) = tokio::sync::broadcast::channel(16);
    let poller = Poller::new(
        Box::new(Transitions(script)),
        instruments,
        Box::new(publisher),
        initial,
        events,
    );
    (poller, state)
}

/// eBPF mode: each close is counted under who hung up, a close whose open nobody saw
/// (short-lived) included, and the four `by` series exist from the start.
#[test]
fn ebpf_closes_are_counted_by_who_hung_up_short_lived_ones_included() {
    use crate::source::ClosedBy::*;
    use crate::tracker::SocketEventKind::{Closed, Opened};
    let t0 = Timestamp::now();
    let tr = |ms_ago, port, kind, by| transition(t0, ms_ago, port, kind, by);
    let script = vec![
        tr(50, 5000, Opened, None),
        tr(40, 5000, Closed, Some(Local)),
        // No open for this one: short-lived.
        tr(30, 5001, Closed, Some(Remote)),
        tr(20, 5002, Opened, None),
        tr(10, 5002, Closed, Some(Reset)),
    ];
    let (exporter, registry) = crate::export::prometheus::reader("h").unwrap();
    let provider = opentelemetry_sdk::metrics::SdkMeterProvider::builder()
        .with_reader(exporter)
        .build();
    let meter = provider.meter(crate::instruments::names::METER);
    let closed = || -> Vec<String> {
        crate::export::prometheus::encode(&registry, 0)
            .unwrap()
            .lines()
            .filter(|l| l.starts_with("fix_connections_closed_total{"))
            .map(|l| {
                let by = l.split("by=\"").nth(1).unwrap().split('"').next().unwrap();
                format!("{by} {}", l.rsplit(' ').next().unwrap())
            })
            .collect()
    };
    let instruments = Instruments::new(
        &meter,
        &targets(),
        SourceKind::Ebpf,
        crate::source::ebpf::EbpfSource::CAPABILITIES,
    );
    assert_eq!(
        closed(),
        ["local 0", "remote 0", "reset 0", "unknown 0"],
        "all four from the start"
    );
    let (mut poller, state) = transitions_poller(t0, script, instruments);
    poller.tick(&ManualClock::new(t0));
    assert_eq!(
        closed(),
        ["local 1", "remote 1", "reset 1", "unknown 0"],
        "{:?}",
        state.get().stats
    );
    let s = state.get();
    assert_eq!(
        (s.stats[0].opened, s.stats[0].closed, s.stats[0].short_lived),
        (3, 3, 1)
    );
    let by: Vec<_> = s
        .closed
        .iter()
        .map(|c| (c.local.port(), c.closed_by))
        .collect();
    use crate::source::ClosedBy;
    // The short-lived one is not among the closed sessions with a lifetime.
    assert_eq!(
        by,
        [(5000, Some(ClosedBy::Local)), (5002, Some(ClosedBy::Reset))]
    );
}

/// A source that says a poll brought nothing new (eBPF between lookups, no transitions) costs
/// the loop no work: the published sessions are the same list, not a copy, and only the poll
/// is counted; the next poll with news is applied in full.
#[test]
fn a_poll_that_brought_nothing_new_reuses_the_published_sessions() {
    let (a, b) = (sock(5000, 1), sock(5001, 2));
    let t0 = Timestamp::now();
    let mut r = rig(
        targets(),
        t0,
        vec![Ok(vec![a]), Ok(vec![a]), Ok(vec![a, b])],
        None,
    );
    let quiet = PollNews {
        sessions_changed: false,
        health_fresh: false,
    };
    r.news.lock().unwrap().extend([PollNews::EVERYTHING, quiet]);
    r.poller.tick(&r.clock);
    let first = r.state.get();
    assert_eq!(first.active.len(), 1);
    r.clock.advance(Duration::from_secs(1));
    r.poller.tick(&r.clock);
    let quiet_state = r.state.get();
    assert!(
        Arc::ptr_eq(&first.active, &quiet_state.active),
        "not copied"
    );
    assert_eq!(quiet_state.health.polls, 2);
    assert_eq!(
        quiet_state.health.last_success,
        Some(t0.after(Duration::from_secs(1)))
    );
    r.clock.advance(Duration::from_secs(1));
    r.poller.tick(&r.clock);
    let s = r.state.get();
    assert_eq!((s.active.len(), s.stats[0].opened), (2, 2));
}

/// A source that says no session changed but brings fresh health (eBPF with a pass every
/// poll) skips the tracker's snapshot, and the published sessions are copied from the last
/// ones with the new health: the same sessions, field for field, that a poll applied in full
/// publishes. A poll that says sessions changed is applied in full again.
#[test]
fn a_poll_with_only_fresh_health_skips_the_snapshot_and_publishes_what_a_full_one_would() {
    let with = |s: SocketEntry, silence_ms: u32| SocketEntry {
        health: Some(crate::source::TcpHealth {
            rtt_us: 250 + silence_ms,
            last_data_recv_ms: silence_ms,
            ..Default::default()
        }),
        ..s
    };
    let (a, b) = (sock(5000, 1), sock(5001, 2));
    let steps = vec![
        Ok(vec![with(a, 10), with(b, 20)]),
        Ok(vec![with(a, 1010), with(b, 1020)]),
        // The source lists `b` no more yet says nothing changed: trusted, `b` stays.
        Ok(vec![with(a, 2010)]),
        Ok(vec![with(a, 3010)]),
    ];
    let health_only = PollNews {
        sessions_changed: false,
        health_fresh: true,
    };
    let t0 = Timestamp::now();
    let mut quick = rig(targets(), t0, steps.clone(), None);
    let mut full = rig(targets(), t0, steps, None);
    quick.news.lock().unwrap().extend([
        PollNews::EVERYTHING,
        health_only,
        health_only,
        PollNews::EVERYTHING,
    ]);
    for r in [&mut quick, &mut full] {
        r.poller.tick(&r.clock);
        r.clock.advance(Duration::from_secs(1));
        r.poller.tick(&r.clock);
    }
    let (q, f) = (quick.state.get(), full.state.get());
    assert_eq!(q.active, f.active, "copied with the new health");
    let silences: Vec<_> = (q.active.iter())
        .map(|s| s.health.unwrap().0.last_data_recv_ms)
        .collect();
    assert_eq!(silences, [1010, 1020]);
    assert!(!Arc::ptr_eq(&q.active, &f.active));

    quick.clock.advance(Duration::from_secs(1));
    quick.poller.tick(&quick.clock);
    let s = quick.state.get();
    assert_eq!(
        s.active.len(),
        2,
        "the snapshot was skipped: {:?}",
        s.active
    );
    assert_eq!(s.active[1].health, None, "listed no more: no health");
    quick.clock.advance(Duration::from_secs(1));
    quick.poller.tick(&quick.clock);
    let s = quick.state.get();
    assert_eq!(
        (s.active.len(), s.stats[0].closed),
        (1, 1),
        "applied in full"
    );
    assert_eq!(s.active[0].health.unwrap().0.last_data_recv_ms, 3010);
}

/// The source's own totals (the eBPF ring's losses) reach `fix_monitor_events_lost_total` as
/// growth, once each, failed polls included; the reconcile counter exists for eBPF only.
#[test]
fn the_sources_lost_records_are_counted_once() {
    let t0 = Timestamp::now();
    let a = sock(5000, 1);
    let mut r = rig(
        targets(),
        t0,
        vec![Ok(vec![a]), Err("down".into()), Ok(vec![a])],
        None,
    );
    let metric = |r: &Rig, name: &str| -> Option<f64> {
        crate::export::prometheus::encode(&r.registry, 0)
            .unwrap()
            .lines()
            .find(|l| l.starts_with(name))
            .map(|l| l.rsplit(' ').next().unwrap().parse().unwrap())
    };
    *r.counts.lock().unwrap() = crate::source::EventCounts {
        lost: 3,
        reconciles: 2,
    };
    r.poller.tick(&r.clock);
    assert_eq!(metric(&r, "fix_monitor_events_lost_total"), Some(3.0));
    r.counts.lock().unwrap().lost = 5;
    r.poller.tick(&r.clock);
    assert_eq!(metric(&r, "fix_monitor_events_lost_total"), Some(5.0));
    r.poller.tick(&r.clock);
    assert_eq!(
        metric(&r, "fix_monitor_events_lost_total"),
        Some(5.0),
        "once"
    );
    assert_eq!(metric(&r, "fix_monitor_reconciles_total"), None, "procfs");
}

/// eBPF mode: records from different CPUs can reach the ring buffer out of kernel-time order.
/// A close read after an open that happened later must still be applied first, or both
/// sessions count at once and the peak exceeds what was ever open (the soak saw 152 for 151).
#[test]
fn ebpf_events_apply_in_kernel_time_order_so_the_peak_is_true() {
    use crate::tracker::SocketEventKind::{Closed, Opened};
    let t0 = Timestamp::now();
    let tr = |ms_ago, port, kind| transition(t0, ms_ago, port, kind, None);
    // 5000 opens; it closes at -30 ms and 5001 opens at -20 ms, but the ring hands the open
    // over first; 5001 closes at -10 ms (the scripted snapshots are empty).
    let script = vec![
        tr(50, 5000, Opened),
        tr(20, 5001, Opened),
        tr(30, 5000, Closed),
        tr(10, 5001, Closed),
    ];
    let meter = opentelemetry::global::meter("test");
    let instruments = Instruments::new(
        &meter,
        &targets(),
        SourceKind::Ebpf,
        crate::source::ebpf::EbpfSource::CAPABILITIES,
    );
    let (mut poller, state) = transitions_poller(t0, script, instruments);
    poller.tick(&ManualClock::new(t0));
    let s = state.get();
    assert_eq!((s.stats[0].opened, s.stats[0].closed), (2, 2));
    assert_eq!((s.stats[0].peak, s.peak), (1, 1), "never two open at once");
}

#[test]
fn expected_up_follows_the_clock_on_every_tick_failed_polls_too() {
    // Two targets: one with a window 07:00-17:30 UTC, one without a schedule (always 1).
    let targets = Targets::new(vec![
        Target::test("10.0.0.5/32", Some(9876), None),
        Target::test("10.0.0.6/32", Some(9876), None),
    ]);
    let config = crate::schedule::ScheduleConfig {
        name: Some("day".into()),
        start: Some("07:00".into()),
        end: Some("17:30".into()),
        ..Default::default()
    };
    let schedule = Arc::new(crate::schedule::Schedule::from_config(&config, 0).unwrap());
    // 17:29:00 UTC on 10 June 2026, on a manual clock.
    let wall = std::time::UNIX_EPOCH + Duration::from_secs(1_781_112_540);
    let t0 = Timestamp {
        mono: Instant::now(),
        wall,
    };
    let steps = vec![Ok(vec![]), Err("gone".into()), Ok(vec![])];
    let mut r = rig(targets, t0, steps, None);
    let meta = &mut Arc::make_mut(&mut r.poller.state).meta;
    Arc::make_mut(meta).schedules = vec![Some(schedule), None];
    let up = |r: &Rig| -> Vec<String> {
        crate::export::prometheus::encode(&r.registry, 0)
            .unwrap()
            .lines()
            .filter(|l| l.starts_with("fix_target_expected_up{"))
            .map(|l| {
                let t = l
                    .split("target=\"")
                    .nth(1)
                    .unwrap()
                    .split('"')
                    .next()
                    .unwrap();
                format!("{t} {}", l.rsplit(' ').next().unwrap())
            })
            .collect()
    };
    r.poller.tick(&r.clock);
    assert_eq!(up(&r), ["10.0.0.5:9876 1", "10.0.0.6:9876 1"]);
    // 17:30:30: the window has ended; the poll fails, the gauge moves all the same.
    r.clock.advance(Duration::from_secs(90));
    r.poller.tick(&r.clock);
    assert_eq!(up(&r), ["10.0.0.5:9876 0", "10.0.0.6:9876 1"]);
    let health = r.state.get().health_view(r.clock.now());
    assert_eq!(health.schedules.len(), 1);
    assert!(!health.schedules[0].expected_up);
    assert_eq!(health.schedules[0].next_change, "2026-06-11T07:00:00.000Z");
}
