//! The running sidecar: the poll loop, and the one shutdown path.
//!
//! `run` opens the connection source and binds the HTTP endpoint first, so that a source that
//! does not work or an address that is taken fails the start instead of leaving a sidecar that
//! silently reports nothing. Then the poll loop (`poller`) runs on its own thread (a poll is a few blocking
//! syscalls; it must not wait behind HTTP work, nor HTTP work behind it) at a fixed rate, and the
//! endpoint serves on the tokio runtime. On shutdown: polling stops, the endpoint drains, the
//! meter provider flushes every exporter, and `run` returns.

use std::future::Future;
use std::sync::mpsc;
use std::time::Duration;

use crate::config::Settings;
use crate::export::{http, Telemetry};
use crate::health::SharedHealthEvent;
use crate::instruments::Instruments;
use crate::persist::{StateDir, Tag};
use crate::poller::{Input, Persist, Poller, SystemClock};
use crate::session_events::SessionEvents;
use crate::source;
use crate::source::events::Mode;
use crate::state::{Meta, Publisher, State, StateReader};
use crate::tracker::{Event, SharedEvent, Timestamp};

use tokio_util::sync::{CancellationToken, DropGuard};

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("cannot open the connection source: {0}")]
    Source(#[from] source::SourceError),
    #[error("{0}")]
    Listen(std::io::Error),
    #[error("cannot set up OpenTelemetry: {0}")]
    Telemetry(#[from] crate::export::TelemetryError),
    #[error("HTTP endpoint failed: {0}")]
    Serve(std::io::Error),
    #[error("cannot use the state directory {path}: {error}")]
    State { path: String, error: std::io::Error },
}

/// This host's name, as the metrics and endpoints report it.
pub fn hostname() -> String {
    gethostname::gethostname().to_string_lossy().into_owned()
}

/// The TCP layer's events, as a subscriber reads them.
type TcpEvents = tokio::sync::broadcast::Receiver<SharedEvent>;

/// The FIX layer's view of the TCP layer: the published state's active sessions, as the
/// wire's table keys them (IPv4-mapped addresses made plain, as packets carry them).
struct ActiveLinks {
    state: StateReader,
    generation: Option<u64>,
    /// The poll loop's inputs: the FIX layer's accounts of ends go there.
    inputs: mpsc::Sender<Input>,
    /// The TCP layer's events, for its closes.
    events: TcpEvents,
    /// Events missed because the FIX thread fell behind (said once).
    lagged: bool,
}

impl crate::fix::monitor::LiveSessions for ActiveLinks {
    fn changed(&mut self) -> Option<crate::fix::monitor::LiveLinks> {
        let st = self.state.get();
        if self.generation == Some(st.generation) {
            return None;
        }
        self.generation = Some(st.generation);
        let plain =
            |a: std::net::SocketAddr| std::net::SocketAddr::new(a.ip().to_canonical(), a.port());
        Some(
            st.active
                .iter()
                .map(|s| {
                    let link = crate::fix::tracker::TcpLink {
                        local: plain(s.local),
                        remote: plain(s.remote),
                    };
                    // The smoothed RTT of the last poll's tcp_info (netlink), if it had one.
                    (link, s.health.as_ref().and_then(|(h, _)| h.rtt()))
                })
                .collect(),
        )
    }

    fn closed(&mut self) -> Vec<(crate::fix::tracker::TcpLink, std::time::SystemTime)> {
        use tokio::sync::broadcast::error::TryRecvError;
        let mut out = Vec::new();
        loop {
            let (conn, at) = match self.events.try_recv().as_deref() {
                Ok(Event::Closed { conn, at, .. }) | Ok(Event::ShortLived { conn, at, .. }) => {
                    (conn.key, at.wall)
                }
                Ok(Event::Opened(_)) => continue,
                Err(TryRecvError::Lagged(n)) => {
                    if !std::mem::replace(&mut self.lagged, true) {
                        tracing::warn!(
                            missed = n,
                            "FIX layer: fell behind the TCP layer's closes; the ends it missed \
                             are judged without the engine logs' evidence"
                        );
                    }
                    continue;
                }
                Err(TryRecvError::Empty | TryRecvError::Closed) => return out,
            };
            let plain = |a: std::net::SocketAddr| {
                std::net::SocketAddr::new(a.ip().to_canonical(), a.port())
            };
            let link = crate::fix::tracker::TcpLink {
                local: plain(conn.local),
                remote: plain(conn.remote),
            };
            out.push((link, at));
        }
    }

    fn ended(&mut self, end: crate::fix::tracker::LinkEnd) {
        // The loop gone (shutting down): the end is judged without it.
        let _ = self.inputs.send(Input::FixEnded(Box::new(end)));
    }
}

/// How long a capture entry that the TCP layer never listed may stay without a segment: three
/// polls (a new session is listed at the next poll), and at least 10 s.
fn fix_idle_bound(interval: Duration) -> Duration {
    (interval * 3).max(Duration::from_secs(10))
}

/// Options for [`start`] that are not configuration: how the sidecar is embedded.
#[derive(Debug, Clone, Default)]
pub struct StartOptions {
    /// Serve the HTTP endpoint (`run` and `demo` do; the console view alone does not).
    pub serve_http: bool,
    /// What the start-up step read ([`crate::startup::prepare`]): the endpoint's web config.
    pub resources: crate::startup::Resources,
    /// Where `POST /-/reload` asks for a reload (served when `prometheus.reload_endpoint`).
    pub reload_requests: Option<tokio::sync::mpsc::Sender<crate::reload::Request>>,
}

/// A started sidecar: polling, and serving if asked to. Stop it with [`Sidecar::stop`].
///
/// Every task stops on one cancellation token, `cancel`, or a child of it: a part that must
/// stop before another has a child token of its own, cancelled first (the kernel events reader
/// before the poll loop it feeds, the poll loop and the FIX layer before the final flush).
pub struct Sidecar {
    state: StateReader,
    telemetry: Telemetry,
    events: tokio::sync::broadcast::Sender<SharedEvent>,
    /// Sessions turning stale and recovering, as the poll loop finds them.
    health_events: tokio::sync::broadcast::Sender<SharedHealthEvent>,
    /// The loop's inputs (kernel destroy events; its stop, from its token).
    inputs: mpsc::Sender<Input>,
    /// The sidecar's token, cancelled when this guard drops: last in [`Sidecar::stop`], or
    /// with a sidecar dropped unstopped (every task stops then too). The endpoint stops on it;
    /// every other part's token is a child of it.
    cancel: DropGuard,
    poll_loop: PollLoop,
    server: Option<Server>,
    /// How long `stop` waits for the final export.
    flush_grace: Duration,
    /// The kernel close-event reader, if events are in use.
    events_reader: Option<EventsReader>,
    /// The FIX session layer, when `[fix]` turns it on.
    fix: Option<FixLayer>,
    /// What a reload changes beyond the parts above.
    running: Running,
}

/// The running configuration, and the handles a reload goes through.
struct Running {
    settings: Settings,
    /// The source that runs (what `auto` chose), and what it can do.
    kind: source::SourceKind,
    capabilities: source::Capabilities,
    /// How closes are known (a reload re-subscribes to the kernel's close events).
    mode: Mode,
    /// The endpoint's web config: each new connection takes the latest.
    web: tokio::sync::watch::Sender<std::sync::Arc<crate::export::web_config::WebConfig>>,
    status: crate::reload::Status,
}

/// The poll loop's thread, and the token it stops on.
struct PollLoop {
    /// A child of the sidecar's token: the loop stops (and saves its state) before the final
    /// flush, so that the flush exports its last counts.
    stop: CancellationToken,
    thread: std::thread::JoinHandle<()>,
}

impl PollLoop {
    /// Runs `poller` on a thread of its own (a poll is a few blocking syscalls; it must not
    /// wait behind HTTP work, nor HTTP work behind it). The thread sleeps on its input channel,
    /// so the token reaches it there, as [`Input::Stop`].
    fn spawn(
        poller: Poller,
        interval: Duration,
        inputs: (mpsc::Sender<Input>, mpsc::Receiver<Input>),
        stop: CancellationToken,
    ) -> PollLoop {
        let (tx, rx) = inputs;
        let stopped = stop.clone();
        tokio::spawn(async move {
            stopped.cancelled().await;
            let _ = tx.send(Input::Stop);
        });
        let thread = std::thread::Builder::new()
            .name("fix-monitor-poll".into())
            .spawn(move || crate::poller::run(poller, &SystemClock, interval, rx))
            .expect("spawning the poll thread");
        PollLoop { stop, thread }
    }

    /// Cancels the loop's token and waits for the thread, at most [`POLL_STOP_GRACE`].
    async fn stop(self) {
        self.stop.cancel();
        // Joined on a thread of its own, not the runtime's blocking pool: a poll thread that
        // never returns must not hold up the runtime's own shutdown either.
        let (joined_tx, joined) = tokio::sync::oneshot::channel();
        let thread = self.thread;
        let _ = std::thread::Builder::new()
            .name("fix-monitor-join".into())
            .spawn(move || {
                let _ = joined_tx.send(thread.join().is_ok());
            });
        if tokio::time::timeout(POLL_STOP_GRACE, joined).await.is_err() {
            tracing::warn!(
                grace = %humantime::format_duration(POLL_STOP_GRACE),
                "the poll loop did not stop within its grace period (a poll blocked in the \
                 kernel?); going on without it"
            );
        }
    }
}

/// The HTTP endpoint's task, and where it listens. It drains when the sidecar's own token is
/// cancelled: the last part to stop, so that it answers while the rest shuts down.
struct Server {
    local: std::net::SocketAddr,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
}

impl Server {
    /// Serves `router` on `listener` until `stop` is cancelled.
    fn spawn(
        listener: tokio::net::TcpListener,
        router: axum::Router,
        settings: &Settings,
        web: tokio::sync::watch::Receiver<std::sync::Arc<crate::export::web_config::WebConfig>>,
        stop: CancellationToken,
    ) -> Result<Server, RunError> {
        let current = web.borrow().clone();
        let local = listener.local_addr().map_err(RunError::Listen)?;
        tracing::info!(
            "listening on {}://{local} (/metrics{}, /health{}, /sessions; {})",
            if current.tls.is_some() {
                "https"
            } else {
                "http"
            },
            if settings.prometheus.enabled {
                ""
            } else {
                " disabled"
            },
            if settings.prometheus.expose_connections {
                ", /connections"
            } else {
                "; /connections turned off"
            },
            current.describe(),
        );
        let task = tokio::spawn(http::serve_reloadable(
            listener,
            router,
            web,
            stop.cancelled_owned(),
        ));
        Ok(Server { local, task })
    }

    /// Waits for the drain (started by the token), at most [`SERVER_STOP_GRACE`].
    async fn drained(self) {
        if tokio::time::timeout(SERVER_STOP_GRACE, self.task)
            .await
            .is_err()
        {
            tracing::warn!("the endpoint did not stop within its grace period");
        }
    }
}

/// The kernel close-event reader's thread, and the token it stops on.
struct EventsReader {
    /// A child of the poll loop's token, cancelled first: the loop handles every batch the
    /// reader sent before the loop itself stops.
    stop: CancellationToken,
    thread: std::thread::JoinHandle<()>,
}

impl EventsReader {
    /// Reads `sub` on a thread of its own, sending each batch to the poll loop's `inputs`.
    #[cfg(target_os = "linux")]
    fn spawn(sub: Subscription, inputs: mpsc::Sender<Input>, stop: CancellationToken) -> Self {
        let stopped = stop.clone();
        let thread = source::destroy::spawn_reader(
            sub,
            move || stopped.is_cancelled(),
            move |batch| inputs.send(Input::Events(batch)).is_ok(),
        );
        EventsReader { stop, thread }
    }

    #[cfg(not(target_os = "linux"))]
    fn spawn(_: Subscription, _: mpsc::Sender<Input>, _: CancellationToken) -> Self {
        unreachable!("no subscription off Linux")
    }

    /// Cancels the reader's token and waits for its thread (it looks every 200 ms).
    async fn stop(self) {
        self.stop.cancel();
        let thread = self.thread;
        let _ = tokio::task::spawn_blocking(move || thread.join()).await;
    }
}

/// The FIX session layer: its published state, its instruments (kept here so that they stay
/// registered), and the task that stops its threads when its token is cancelled. `FixMonitor`
/// stops on a flag of its own (`FixMonitor::stop`); that task is the bridge from the token.
struct FixLayer {
    reader: crate::fix::monitor::FixReader,
    reloads: crate::fix::monitor::FixReloads,
    _instruments: crate::fix::metrics::FixInstruments,
    /// A child of the sidecar's token, cancelled with the poll loop's, before the flush.
    stop: CancellationToken,
    stopped: tokio::task::JoinHandle<()>,
}

impl FixLayer {
    /// Starts the FIX layer, which reads the TCP layer's sessions off `state`, hears its closes
    /// and hands the poll loop (`inputs`) its account of each end; it stops with a child of
    /// `cancel`.
    fn start(
        settings: &Settings,
        meter: &opentelemetry::metrics::Meter,
        (state, inputs, closes): (&StateReader, mpsc::Sender<Input>, TcpEvents),
        events: SessionEvents,
        cancel: CancellationToken,
    ) -> FixLayer {
        let stop = cancel.child_token();
        let tcp = crate::fix::monitor::TcpView {
            sessions: Box::new(ActiveLinks {
                state: state.clone(),
                generation: None,
                inputs,
                events: closes,
                lagged: false,
            }),
            idle: fix_idle_bound(settings.poll.interval),
        };
        let monitor = crate::fix::monitor::FixMonitor::start(
            &settings.fix,
            &settings.targets,
            meter,
            Some(tcp),
            events,
        );
        let reader = monitor.reader();
        let reloads = monitor.reloads();
        let instruments = crate::fix::metrics::FixInstruments::new(meter, monitor.reader());
        let token = stop.clone();
        let stopped = tokio::spawn(async move {
            token.cancelled().await;
            // The FIX threads stop at their next read timeout.
            let _ = tokio::task::spawn_blocking(move || monitor.stop()).await;
        });
        FixLayer {
            reader,
            reloads,
            _instruments: instruments,
            stop,
            stopped,
        }
    }

    /// Cancels the layer's token and waits for its threads, at most [`POLL_STOP_GRACE`]
    /// (bounded like the poll loop).
    async fn stop(self) {
        self.stop.cancel();
        if tokio::time::timeout(POLL_STOP_GRACE, self.stopped)
            .await
            .is_err()
        {
            tracing::warn!(
                "the FIX layer did not stop within its grace period; going on without it"
            );
        }
    }
}

/// The FIX layer's published state, or a disabled one without it.
fn fix_reader(fix: Option<&FixLayer>) -> crate::fix::monitor::FixReader {
    fix.map(|f| f.reader.clone())
        .unwrap_or_else(crate::fix::monitor::FixReader::disabled)
}

/// The kernel close-event subscription, where the source and the kernel allow it.
#[cfg(target_os = "linux")]
type Subscription = source::destroy::DestroySubscriber;
#[cfg(not(target_os = "linux"))]
type Subscription = ();

/// Subscribes to kernel close events for `targets` where the source pairs with them (its
/// capabilities say so); says why not otherwise. Never fails the start: polling alone still
/// works (and says so).
fn subscribe_events(
    kind: source::SourceKind,
    caps: source::Capabilities,
    targets: &crate::target::Targets,
) -> (Mode, Option<Subscription>) {
    #[cfg(target_os = "linux")]
    {
        match caps.events {
            // Its own events (the eBPF tracepoint): no socket-destroy notifications needed.
            source::EventFeed::FromSource => return (Mode::Tracepoint, None),
            source::EventFeed::None => {
                let reason = format!("the {} source has no kernel close events", kind.as_str());
                return (Mode::Polling { reason }, None);
            }
            source::EventFeed::DestroyNotifications => {}
        }
        match source::destroy::DestroySubscriber::open(targets) {
            Ok(sub) => (Mode::KernelEvents, Some(sub)),
            Err(e) => (
                Mode::Polling {
                    reason: format!("the kernel refused the socket-destroy subscription: {e}"),
                },
                None,
            ),
        }
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = (targets, caps);
        let reason = format!(
            "no kernel close events on this platform (the {} source)",
            kind.as_str()
        );
        (Mode::Polling { reason }, None)
    }
}

/// `poll.health_interval` in the log: what it does with this source, and what it delays.
fn say_health_interval(settings: &Settings, kind: source::SourceKind, caps: source::Capabilities) {
    let Some(every) = settings.poll.health_interval else {
        return;
    };
    let shown = humantime::format_duration(every).to_string();
    if caps.health != source::HealthFeed::ByLookup {
        tracing::info!(
            health_interval = %shown,
            source = kind.as_str(),
            "poll.health_interval is not used: only the ebpf source reads session health apart \
             from its polls (netlink reads it in every dump; procfs and netstat have none)"
        );
        return;
    }
    tracing::info!(
        health_interval = %shown,
        "session health: every session's tcp_info looked up once per health interval; the \
         health gauges, RTT samples and staleness are as of the last lookup"
    );
    for t in settings.targets.iter() {
        if let Some(stale_after) = t.stale_after.filter(|s| every > *s) {
            tracing::warn!(
                target = %t.name,
                health_interval = %shown,
                stale_after = %humantime::format_duration(stale_after),
                "poll.health_interval is longer than the target's stale_after: a stale session \
                 is seen up to one health interval late"
            );
        }
    }
}

/// How a poll's missing sockets are confirmed: an exact `sock_diag` lookup (by cookie or by
/// inode, as the source's capabilities say) where netlink works, none otherwise.
fn confirmation(confirm: source::Confirmation) -> Box<dyn crate::tracker::Confirm + Send> {
    #[cfg(target_os = "linux")]
    {
        let by_inode = match confirm {
            source::Confirmation::ByCookie => false,
            source::Confirmation::ByInode => true,
            source::Confirmation::None => return Box::new(crate::tracker::Unconfirmed),
        };
        match source::confirm::Confirmer::open() {
            Ok(c) => return Box::new(source::confirm::Lookup::new(c, by_inode)),
            Err(e) => {
                tracing::warn!(error = %e, "no exact socket lookups: a socket missing from one poll is closed unconfirmed")
            }
        }
    }
    let _ = confirm;
    Box::new(crate::tracker::Unconfirmed)
}

/// The tracker's confirmation through the kernel's exact lookups: the glue between the two
/// layers, here where they are put together.
#[cfg(target_os = "linux")]
impl crate::tracker::Confirm for source::confirm::Lookup {
    fn confirm(&mut self, conn: &crate::tracker::Connection) -> crate::tracker::Presence {
        use crate::tracker::Presence;
        let k = &conn.key;
        match self.still_established(k.local, k.remote, k.id) {
            Some(true) => Presence::Established,
            Some(false) => Presence::Closed,
            None => Presence::Unknown,
        }
    }
}

/// Opens the state directory and reads what a previous run left there (ignored, with a
/// warning, when it is from another boot or host, or unreadable).
fn open_state(
    dir: &std::path::Path,
    host: &str,
) -> Result<(Persist, Vec<crate::persist::Record>), RunError> {
    let fail = |error| RunError::State {
        path: dir.display().to_string(),
        error,
    };
    let tag = Tag::current(host).map_err(fail)?;
    let state = StateDir::open(dir, tag).map_err(fail)?;
    let loaded = match state.load() {
        Ok(l) => l,
        Err(e) => {
            tracing::warn!(path = %state.path().display(), error = %e, "state file ignored: cannot read it");
            Default::default()
        }
    };
    if let Some(why) = &loaded.ignored {
        tracing::warn!(path = %state.path().display(), "state file ignored: {why}");
    } else if !loaded.sessions.is_empty() {
        tracing::info!(path = %state.path().display(), sessions = loaded.sessions.len(), "state file read: sessions still open keep their start");
    }
    Ok((Persist::new(state), loaded.sessions))
}

/// How many events a slow subscriber may lag behind before it misses some. Each slot holds a
/// pointer ([`SharedEvent`]): the channel's slots are written when it is made, so slots that
/// held the events themselves (about 250 bytes) kept 1.5 MiB resident for the two channels.
const EVENT_BUFFER: usize = 4096;

/// Longest wait for the final export at shutdown (SIGTERM's grace period of a supervisor is
/// typically 10-30 s). With OTLP on, the export's own timeout plus a second, if longer: a
/// slow collector still gets its full chance, a hung one is bounded.
pub const FLUSH_GRACE: Duration = Duration::from_secs(5);

/// Longest wait for the poll thread at shutdown. A poll takes milliseconds; one stuck in the
/// kernel (a netlink receive that never completes) is left behind rather than holding up the
/// exit.
pub const POLL_STOP_GRACE: Duration = Duration::from_secs(2);

/// Longest wait for the poll loop to take a reload's targets (it handles its inputs between
/// polls, which take milliseconds).
const RELOAD_GRACE: Duration = Duration::from_secs(10);

/// How long the endpoint's drain may take, with a second's slack for the task to return.
const SERVER_STOP_GRACE: Duration = Duration::from_secs(3);

/// The `fix_session_ends_total` series of the causes this sidecar can tell, at 0.
fn ends_at_zero(
    instruments: &mut Instruments,
    settings: &Settings,
    caps: crate::source::Capabilities,
    fix_on: bool,
) {
    instruments.start_ends_at_zero(&possible_ends(settings, caps, fix_on));
}

/// The causes of ends this sidecar can tell with `settings` (its schedules, the process
/// lookup), a source that can do `caps`, and the FIX layer on or off.
fn possible_ends(
    settings: &Settings,
    caps: crate::source::Capabilities,
    fix_on: bool,
) -> Vec<crate::ends::Cause> {
    let process_known =
        settings.poll.process_lookup || caps.process == crate::source::ProcessFeed::FromEvents;
    crate::ends::possible(
        fix_on,
        caps.closed_by,
        process_known,
        settings.target_schedules.iter().any(Option::is_some),
    )
}

/// The poll loop's parts the settings ask for: the judge of ends (with the schedules), the
/// state file, the process lookup.
fn with_settings(
    mut poller: Poller,
    settings: &Settings,
    persist: Option<(Persist, Vec<crate::persist::Record>)>,
    fix_on: bool,
) -> Poller {
    let ends = crate::ends::Scheduled {
        schedules: settings.target_schedules.clone(),
        grace: settings.schedule_grace,
    };
    poller = poller.with_ends(fix_on, Box::new(ends));
    if let Some((persist, restored)) = persist {
        poller = poller.with_persist(persist, &restored);
    }
    if settings.poll.process_lookup {
        poller = poller.with_process_lookup(std::path::Path::new("/proc"));
    }
    poller
}

/// Binds the endpoint's address: taken, or not allowed, fails the start.
async fn bind(settings: &Settings) -> Result<tokio::net::TcpListener, RunError> {
    (http::bind(settings.prometheus.listen).await).map_err(RunError::Listen)
}

/// Registers every instrument of the sidecar on `meter`: the sessions' (for what `source` can
/// do), the process's, the reload's, and the endpoint's when it serves.
fn register_instruments(
    meter: &opentelemetry::metrics::Meter,
    settings: &Settings,
    source: &dyn source::Source,
    serve_http: bool,
) -> (Instruments, crate::reload::Status) {
    let kind = source.kind();
    let instruments = Instruments::new(meter, &settings.targets, kind, source.capabilities());
    crate::process::register(meter);
    if serve_http {
        crate::export::server::register(meter);
    }
    (instruments, crate::reload::Status::register(meter))
}

/// Opens the source, binds the endpoint (if asked), and starts polling. Anything that cannot
/// work fails here, before polling starts.
pub async fn start(settings: &Settings, options: StartOptions) -> Result<Sidecar, RunError> {
    let resource = crate::instruments::resource(&hostname());
    let host = crate::instruments::host_name(&resource);
    let source = open_source(settings)?;
    let listener = match options.serve_http {
        true => Some(bind(settings).await?),
        false => None,
    };

    let telemetry = Telemetry::new(resource, &host, settings.prometheus.enabled, &settings.otlp)?;
    let meter = opentelemetry::metrics::MeterProvider::meter(
        &telemetry.provider,
        crate::instruments::names::METER,
    );
    let (mut instruments, status) =
        register_instruments(&meter, settings, source.as_ref(), options.serve_http);
    let (mode, subscription) =
        subscribe_events(source.kind(), source.capabilities(), &settings.targets);
    let persist = match &settings.state.dir {
        Some(dir) => Some(open_state(dir, &host)?),
        None => None,
    };
    let initial = initial_state(settings, &host, source.as_ref(), &mode);
    let (publisher, state) = Publisher::new(initial.clone());
    let cancel = CancellationToken::new();
    let (inputs, inputs_rx) = mpsc::channel::<Input>();
    let session_events = SessionEvents::new(settings.log.format, telemetry.session_logger());
    let (events, _) = tokio::sync::broadcast::channel(EVENT_BUFFER);
    let (health_events, _) = tokio::sync::broadcast::channel(EVENT_BUFFER);
    let tcp = (&state, inputs.clone(), events.subscribe());
    let (fix_events, fix_cancel) = (session_events.clone(), cancel.clone());
    let fix = (settings.fix.enabled())
        .then(|| FixLayer::start(settings, &meter, tcp, fix_events, fix_cancel));
    // Before the endpoint serves: no scrape sees the ends' zeros missing.
    ends_at_zero(
        &mut instruments,
        settings,
        source.capabilities(),
        fix.is_some(),
    );
    say_started(settings, &host, source.kind(), &mode, &telemetry);

    let (web, web_rx) = tokio::sync::watch::channel(options.resources.web.clone());
    let server = match listener {
        Some(listener) => Some(serve(
            listener,
            settings,
            &options,
            (&state, &telemetry, fix.as_ref()),
            web_rx,
            cancel.clone(),
        )?),
        None => None,
    };

    let confirm = confirmation(source.capabilities().confirm);
    let (poll_kind, capabilities) = (source.kind(), source.capabilities());
    let mut poller = Poller::new(
        source,
        instruments,
        Box::new(publisher),
        initial,
        events.clone(),
    )
    .with_confirm(confirm)
    .with_session_events(session_events)
    .with_health_events(health_events.clone())
    .with_destroy_notifications(subscription.is_some());
    poller = with_settings(poller, settings, persist, fix.is_some());
    let poll_loop = PollLoop::spawn(
        poller,
        settings.poll.interval,
        (inputs.clone(), inputs_rx),
        cancel.child_token(),
    );
    let events_reader = subscription
        .map(|sub| EventsReader::spawn(sub, inputs.clone(), poll_loop.stop.child_token()));
    let running = Running {
        settings: settings.clone(),
        kind: poll_kind,
        capabilities,
        mode,
        web,
        status,
    };
    Ok(Sidecar {
        state,
        telemetry,
        events,
        health_events,
        inputs,
        cancel: cancel.drop_guard(),
        poll_loop,
        server,
        flush_grace: flush_grace(settings),
        events_reader,
        fix,
        running,
    })
}

/// The state published before the first poll: what runs, and how.
fn initial_state(
    settings: &Settings,
    host: &str,
    source: &dyn source::Source,
    mode: &Mode,
) -> State {
    State::initial(Meta {
        events: mode.clone(),
        host: host.to_string(),
        source: source.kind(),
        source_reason: source.why_chosen(),
        capabilities: source.capabilities(),
        interval: settings.poll.interval,
        started: Timestamp::now(),
        targets: settings.targets.clone(),
        schedules: settings.target_schedules.clone(),
    })
}

/// Starts the endpoint on `listener`: the sidecar's routes and the FIX layer's, until `stop`.
fn serve(
    listener: tokio::net::TcpListener,
    settings: &Settings,
    options: &StartOptions,
    (state, telemetry, fix): (&StateReader, &Telemetry, Option<&FixLayer>),
    web: tokio::sync::watch::Receiver<std::sync::Arc<crate::export::web_config::WebConfig>>,
    stop: CancellationToken,
) -> Result<Server, RunError> {
    let mut router = http::router(
        state.clone(),
        telemetry.prometheus.clone(),
        settings.prometheus.expose_connections,
        fix_reader(fix),
    )
    .merge(crate::fix::http::routes(fix_reader(fix), state.clone()));
    if let (true, Some(requests)) = (
        settings.prometheus.reload_endpoint,
        options.reload_requests.clone(),
    ) {
        router = router.merge(http::reload_route(requests));
    }
    Server::spawn(listener, router, settings, web, stop)
}

/// Opens the connection source, with the health interval it is to keep.
fn open_source(settings: &Settings) -> Result<Box<dyn source::Source>, RunError> {
    let mut source = source::open_with(
        settings.poll.source,
        &settings.targets,
        settings.poll.reconcile_interval,
    )?;
    source.set_health_interval(settings.poll.health_interval);
    if settings.poll.source != source::SourceKind::Auto {
        // `auto` said it when it chose.
        tracing::info!(
            source = source.kind().as_str(),
            reason = source.why_chosen().unwrap_or_default(),
            "connection source selected: {}",
            source.kind().as_str()
        );
    }
    say_health_interval(settings, source.kind(), source.capabilities());
    Ok(source)
}

/// How long the final export may take: [`FLUSH_GRACE`], or with OTLP on the export's own
/// timeout plus a second, if longer.
fn flush_grace(settings: &Settings) -> Duration {
    if settings.otlp.enabled {
        FLUSH_GRACE.max(settings.otlp.timeout + Duration::from_secs(1))
    } else {
        FLUSH_GRACE
    }
}

/// The start in the log: what is watched, how closes are known, where metrics are pushed.
fn say_started(
    settings: &Settings,
    host: &str,
    kind: source::SourceKind,
    mode: &Mode,
    telemetry: &Telemetry,
) {
    tracing::info!(
        host = %host,
        source = kind.as_str(),
        interval = %humantime::format_duration(settings.poll.interval),
        targets = %settings.targets.iter().map(|t| t.name.as_str()).collect::<Vec<_>>().join(", "),
        "fix-monitor started"
    );
    match mode {
        Mode::KernelEvents => tracing::info!(
            mode = mode.as_str(),
            "kernel close events in use: every close exactly, sessions shorter than a poll included"
        ),
        Mode::Tracepoint => tracing::info!(
            mode = mode.as_str(),
            reconcile_interval = %humantime::format_duration(settings.poll.reconcile_interval),
            "eBPF tracepoint in use: every open and close exactly, with who hung up and the \
             process; full dumps only to reconcile"
        ),
        Mode::Polling { reason } => tracing::warn!(
            mode = mode.as_str(),
            reason = %reason,
            "polling only: closes are known to within one interval, sessions shorter than a poll are not seen"
        ),
    }
    if let Some(otlp) = &telemetry.otlp {
        tracing::info!(
            url = otlp.url(),
            protocol = settings.otlp.protocol.to_string(),
            interval = %humantime::format_duration(settings.otlp.interval),
            temporality = settings.otlp.temporality.to_string(),
            "pushing metrics over OTLP"
        );
    }
    if let Some((_, logs)) = &telemetry.logs {
        tracing::info!(
            url = logs.url(),
            "pushing session events over OTLP as log records ([otlp] logs = false turns it off)"
        );
    }
}

/// SIGHUP, as a stream of signals (none where it cannot be had).
#[cfg(unix)]
struct Hangups(Option<tokio::signal::unix::Signal>);
#[cfg(not(unix))]
struct Hangups(Option<std::convert::Infallible>);

impl Hangups {
    async fn recv(&mut self) {
        #[cfg(unix)]
        if let Some(s) = self.0.as_mut() {
            s.recv().await;
            return;
        }
        std::future::pending().await
    }
}

#[cfg(not(unix))]
fn hangup_signal() -> Hangups {
    Hangups(None)
}

#[cfg(unix)]
fn hangup_signal() -> Hangups {
    use tokio::signal::unix::{signal, SignalKind};
    match signal(SignalKind::hangup()) {
        Ok(s) => Hangups(Some(s)),
        Err(e) => {
            tracing::warn!(error = %e, "cannot handle SIGHUP: reload by signal is off");
            Hangups(None)
        }
    }
}

impl Sidecar {
    /// Re-reads the configuration through `reloader` and applies it, or refuses it whole
    /// ([`crate::reload`]): the outcome is logged, kept for the reload gauges, and returned.
    pub async fn reload(&mut self, reloader: &crate::reload::Reloader) -> Result<String, String> {
        let outcome = self.try_reload(reloader).await;
        match &outcome {
            Ok(what) => {
                self.running.status.succeeded();
                tracing::info!("{what}");
                // Last, so that the line above is written at the level it was asked at.
                let log = &self.running.settings.log;
                if let Err(e) = (reloader.log_level)(log) {
                    tracing::warn!(level = %log.level, error = %e, "the new log level could not be applied");
                }
            }
            Err(why) => {
                self.running.status.failed();
                tracing::error!(
                    "configuration reload refused, the running configuration stays: {why}"
                );
            }
        }
        outcome
    }

    async fn try_reload(&mut self, reloader: &crate::reload::Reloader) -> Result<String, String> {
        let (new, resources) =
            (reloader.load)().map_err(|e| format!("invalid configuration:\n{e}"))?;
        let restart = crate::reload::restart_only(&self.running.settings, &new);
        if !restart.is_empty() {
            return Err(format!(
                "only a restart applies a change of {} (restart fix-monitor, or put them back)",
                restart.join(", ")
            ));
        }
        // The running source takes the new targets in place where it can (the eBPF programs'
        // maps); else the loop opens one of the same kind for them, before it changes
        // anything (a failure refuses the reload).
        let kind = self.running.kind;
        let (targets, poll) = (new.targets.clone(), new.poll.clone());
        let open = move || {
            let mut source =
                source::open_with(kind, &targets, poll.reconcile_interval).map_err(|e| {
                    format!(
                        "cannot open the {} source for the new targets: {e}",
                        kind.as_str()
                    )
                })?;
            source.set_health_interval(poll.health_interval);
            Ok(source)
        };
        let subscription = self.resubscribe(&new.targets)?;
        if let Some(reader) = self.events_reader.take() {
            reader.stop().await;
        }
        let (done, answer) = mpsc::channel();
        let ends = crate::ends::Scheduled {
            schedules: new.target_schedules.clone(),
            grace: new.schedule_grace,
        };
        let end_causes = possible_ends(&new, self.running.capabilities, self.fix.is_some());
        let reconfigure = crate::poller::Reconfigure {
            end_causes,
            open: Box::new(open),
            targets: new.targets.clone(),
            schedules: new.target_schedules.clone(),
            ends: Box::new(ends),
            done,
        };
        (self.inputs.send(Input::Reconfigure(Box::new(reconfigure))))
            .map_err(|_| "the poll loop has stopped".to_owned())?;
        let dropped = tokio::task::spawn_blocking(move || answer.recv_timeout(RELOAD_GRACE))
            .await
            .ok()
            .and_then(Result::ok);
        let subscription = match dropped {
            // Nothing applied: the close events of the targets that run, again.
            Some(Err(why)) => match self.resubscribe(&self.running.settings.targets) {
                Ok(sub) => {
                    self.listen_for_closes(sub);
                    return Err(why);
                }
                Err(e) => return Err(format!("{why}; and {e}")),
            },
            _ => subscription,
        };
        self.listen_for_closes(subscription);
        if let Some(fix) = &self.fix {
            fix.reloads
                .reconfigure(new.fix.clone(), new.targets.clone());
        }
        self.running.web.send_replace(resources.web.clone());
        // A poll blocked in the kernel: the loop takes the new targets when it returns (they
        // wait in its queue, in order), so the rest is applied all the same.
        let dropped = match dropped {
            Some(Ok(n)) => n.to_string(),
            _ => "not known yet (the poll loop was busy; it applies them next)".to_owned(),
        };
        let what = crate::reload::describe(&self.running.settings, &new, &dropped);
        self.running.settings = new;
        Ok(what)
    }

    /// Reads the kernel's close events of `subscription` into the loop, if there is one.
    fn listen_for_closes(&mut self, subscription: Option<Subscription>) {
        if let Some(sub) = subscription {
            let stop = self.poll_loop.stop.child_token();
            self.events_reader = Some(EventsReader::spawn(sub, self.inputs.clone(), stop));
        }
    }

    /// A new subscription to the kernel's close events for `targets`, where the sidecar has
    /// one (its filter holds the targets).
    fn resubscribe(
        &self,
        targets: &crate::target::Targets,
    ) -> Result<Option<Subscription>, String> {
        if !matches!(self.running.mode, Mode::KernelEvents) {
            return Ok(None);
        }
        #[cfg(target_os = "linux")]
        {
            (source::destroy::DestroySubscriber::open(targets).map(Some)).map_err(|e| {
                format!(
                    "the kernel refused the socket-destroy subscription for the new targets: {e}"
                )
            })
        }
        #[cfg(not(target_os = "linux"))]
        {
            let _ = targets;
            Ok(None)
        }
    }

    /// The published state the endpoints read: sessions, counts, recent closes, poll health.
    pub fn state(&self) -> &StateReader {
        &self.state
    }

    /// The loop's input channel: where event sources (issue 9's destroy events) send to.
    pub fn inputs(&self) -> mpsc::Sender<Input> {
        self.inputs.clone()
    }

    /// The FIX layer's published state (`enabled: false` when it is off).
    pub fn fix(&self) -> crate::fix::monitor::FixReader {
        fix_reader(self.fix.as_ref())
    }

    /// Where the HTTP endpoint listens, if it was asked for.
    pub fn local_addr(&self) -> Option<std::net::SocketAddr> {
        self.server.as_ref().map(|s| s.local)
    }

    /// Opened and closed events as the poll loop produces them.
    pub fn subscribe(&self) -> tokio::sync::broadcast::Receiver<SharedEvent> {
        self.events.subscribe()
    }

    /// Sessions turning stale and recovering (targets with a heartbeat), after each poll.
    pub fn subscribe_health(&self) -> tokio::sync::broadcast::Receiver<SharedHealthEvent> {
        self.health_events.subscribe()
    }

    /// Resolves if the HTTP endpoint stops by itself (it failed); pending otherwise.
    pub async fn failed(&mut self) -> RunError {
        match self.server.as_mut() {
            Some(server) => match (&mut server.task).await {
                Ok(Err(e)) => RunError::Serve(e),
                Ok(Ok(())) => RunError::Serve(std::io::Error::other("stopped unexpectedly")),
                Err(e) => RunError::Serve(std::io::Error::other(e.to_string())),
            },
            None => std::future::pending().await,
        }
    }

    /// The longest [`Sidecar::stop`] takes: the poll thread's grace (the FIX layer's runs
    /// beside it), then the endpoint's drain and the final export side by side.
    pub fn stop_deadline(&self) -> Duration {
        POLL_STOP_GRACE + SERVER_STOP_GRACE.max(self.flush_grace)
    }

    /// The one shutdown path: stop the event reader, then polling and the FIX layer, then drain
    /// the endpoint and flush every exporter (the final OTLP export included) side by side.
    /// Each step cancels its parts' tokens; every wait is bounded: the whole takes at most
    /// [`Sidecar::stop_deadline`] (and the reader's 200 ms wake).
    pub async fn stop(self) {
        tracing::info!("shutting down: stopping the poll loop");
        if let Some(reader) = self.events_reader {
            reader.stop().await;
        }
        let fix = async {
            if let Some(fix) = self.fix {
                fix.stop().await;
            }
        };
        tokio::join!(self.poll_loop.stop(), fix);
        drop(self.cancel);
        let server = async {
            if let Some(server) = self.server {
                server.drained().await;
            }
        };
        let flush = async {
            tracing::info!("flushing metrics");
            self.telemetry.shutdown(self.flush_grace).await;
        };
        tokio::join!(server, flush);
        for t in self.state.get().targets() {
            tracing::info!(
                target_name = %t.name,
                active = t.stats.active,
                opened = t.stats.opened,
                closed = t.stats.closed,
                peak = t.stats.peak,
                "totals"
            );
        }
    }
}

/// Runs the sidecar with its endpoint until `shutdown` resolves. With a `reloader`, SIGHUP
/// (and `POST /-/reload` where turned on) reloads the configuration ([`crate::reload`]).
pub async fn run(
    settings: Settings,
    resources: crate::startup::Resources,
    shutdown: impl Future<Output = ()> + Send + 'static,
    reloader: Option<crate::reload::Reloader>,
) -> Result<(), RunError> {
    // Before the start: a SIGHUP while starting asks for a reload, it does not end the process
    // (the signal's default action).
    let mut hangups = hangup_signal();
    let (requests, mut asked) = tokio::sync::mpsc::channel::<crate::reload::Request>(4);
    let options = StartOptions {
        serve_http: true,
        resources,
        reload_requests: Some(requests),
    };
    let mut sidecar = start(&settings, options).await?;
    tokio::pin!(shutdown);
    let failed = loop {
        let reply = tokio::select! {
            _ = &mut shutdown => break None,
            e = sidecar.failed() => break Some(e),
            _ = hangups.recv() => {
                tracing::info!("SIGHUP received: reloading the configuration");
                None
            }
            Some(reply) = asked.recv() => {
                tracing::info!("POST /-/reload: reloading the configuration");
                Some(reply)
            }
        };
        let outcome = match &reloader {
            Some(r) => sidecar.reload(r).await,
            None => Err("this sidecar was started without a way to reload".to_owned()),
        };
        if let Some(reply) = reply {
            // The asker gone (timed out): the log has the outcome.
            let _ = reply.send(outcome);
        }
    };
    sidecar.stop().await;
    match failed {
        Some(e) => Err(e),
        None => Ok(()),
    }
}
