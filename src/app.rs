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
use crate::instruments::Instruments;
use crate::poller::{Input, Poller, SystemClock};
use crate::source;
use crate::state::{Meta, Publisher, State, StateReader};
use crate::tracker::{Event, Timestamp};

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
}

/// This host's name, as the metrics and endpoints report it.
pub fn hostname() -> String {
    gethostname::gethostname().to_string_lossy().into_owned()
}

/// Options for [`start`] that are not configuration: how the sidecar is embedded.
#[derive(Debug, Clone, Default)]
pub struct StartOptions {
    /// Serve the HTTP endpoint (`run` and `demo` do; the console view alone does not).
    pub serve_http: bool,
}

/// A started sidecar: polling, and serving if asked to. Stop it with [`Sidecar::stop`].
pub struct Sidecar {
    state: StateReader,
    telemetry: Telemetry,
    events: tokio::sync::broadcast::Sender<Event>,
    /// The loop's inputs (today: stop; issue 9 adds kernel destroy events).
    inputs: mpsc::Sender<Input>,
    poller: std::thread::JoinHandle<()>,
    server: Option<(
        std::net::SocketAddr,
        tokio::sync::oneshot::Sender<()>,
        tokio::task::JoinHandle<std::io::Result<()>>,
    )>,
    /// How long `stop` waits for the final export.
    flush_grace: Duration,
}

/// How many events a slow subscriber may lag behind before it misses some.
const EVENT_BUFFER: usize = 4096;

/// Longest wait for the final export at shutdown (SIGTERM's grace period of a supervisor is
/// typically 10-30 s). With OTLP on, the export's own timeout plus a second, if longer: a
/// slow collector still gets its full chance, a hung one is bounded.
pub const FLUSH_GRACE: Duration = Duration::from_secs(5);

/// Opens the source, binds the endpoint (if asked), and starts polling. Anything that cannot
/// work fails here, before polling starts.
pub async fn start(settings: &Settings, options: StartOptions) -> Result<Sidecar, RunError> {
    let resource = crate::instruments::resource(&hostname());
    let host = crate::instruments::host_name(&resource);
    let source = source::open_with(
        settings.poll.source,
        &settings.targets,
        settings.poll.reconcile_interval,
    )?;
    let listener = if options.serve_http {
        Some(
            http::bind(settings.prometheus.listen)
                .await
                .map_err(RunError::Listen)?,
        )
    } else {
        None
    };

    let telemetry = Telemetry::new(resource, &host, settings.prometheus.enabled, &settings.otlp)?;
    let meter = opentelemetry::metrics::MeterProvider::meter(
        &telemetry.provider,
        crate::instruments::names::METER,
    );
    let instruments = Instruments::new(&meter, &settings.targets, source.kind());
    crate::process::register(&meter);
    let initial = State::initial(Meta {
        host: host.clone(),
        source: source.kind(),
        interval: settings.poll.interval,
        started: Timestamp::now(),
        targets: settings.targets.clone(),
    });
    let (publisher, state) = Publisher::new(initial.clone());
    tracing::info!(
        host = %host,
        source = source.kind().as_str(),
        interval = %humantime::format_duration(settings.poll.interval),
        targets = %settings.targets.iter().map(|t| t.name.as_str()).collect::<Vec<_>>().join(", "),
        "fix-monitor started"
    );
    if let Some(otlp) = &telemetry.otlp {
        tracing::info!(
            url = otlp.url(),
            protocol = settings.otlp.protocol.as_str(),
            interval = %humantime::format_duration(settings.otlp.interval),
            temporality = settings.otlp.temporality.as_str(),
            "pushing metrics over OTLP"
        );
    }

    let server = match listener {
        Some(listener) => {
            let local = listener.local_addr().map_err(RunError::Listen)?;
            tracing::info!(
                "listening on http://{local} (/metrics{}, /health, /connections)",
                if settings.prometheus.enabled {
                    ""
                } else {
                    " disabled"
                }
            );
            let (tx, rx) = tokio::sync::oneshot::channel::<()>();
            let task = tokio::spawn(http::serve(
                listener,
                http::router(state.clone(), telemetry.prometheus.clone()),
                async move {
                    let _ = rx.await;
                },
            ));
            Some((local, tx, task))
        }
        None => None,
    };

    let (events, _) = tokio::sync::broadcast::channel(EVENT_BUFFER);
    let (inputs, inputs_rx) = mpsc::channel::<Input>();
    let poller = {
        let poller = Poller::new(
            source,
            instruments,
            Box::new(publisher),
            initial,
            events.clone(),
        );
        let interval = settings.poll.interval;
        std::thread::Builder::new()
            .name("fix-monitor-poll".into())
            .spawn(move || crate::poller::run(poller, &SystemClock, interval, inputs_rx))
            .expect("spawning the poll thread")
    };
    let flush_grace = if settings.otlp.enabled {
        FLUSH_GRACE.max(settings.otlp.timeout + Duration::from_secs(1))
    } else {
        FLUSH_GRACE
    };
    Ok(Sidecar {
        state,
        telemetry,
        events,
        inputs,
        poller,
        server,
        flush_grace,
    })
}

impl Sidecar {
    /// The published state the endpoints read: sessions, counts, recent closes, poll health.
    pub fn state(&self) -> &StateReader {
        &self.state
    }

    /// The loop's input channel: where event sources (issue 9's destroy events) send to.
    pub fn inputs(&self) -> mpsc::Sender<Input> {
        self.inputs.clone()
    }

    /// Where the HTTP endpoint listens, if it was asked for.
    pub fn local_addr(&self) -> Option<std::net::SocketAddr> {
        self.server.as_ref().map(|s| s.0)
    }

    /// Opened and closed events as the poll loop produces them.
    pub fn subscribe(&self) -> tokio::sync::broadcast::Receiver<Event> {
        self.events.subscribe()
    }

    /// Resolves if the HTTP endpoint stops by itself (it failed); pending otherwise.
    pub async fn failed(&mut self) -> RunError {
        match self.server.as_mut() {
            Some((_, _, task)) => match task.await {
                Ok(Err(e)) => RunError::Serve(e),
                Ok(Ok(())) => RunError::Serve(std::io::Error::other("stopped unexpectedly")),
                Err(e) => RunError::Serve(std::io::Error::other(e.to_string())),
            },
            None => std::future::pending().await,
        }
    }

    /// The one shutdown path: stop polling, drain the endpoint, flush every exporter (the final
    /// OTLP export included, bounded by the grace period).
    pub async fn stop(self) {
        tracing::info!("shutting down: stopping the poll loop");
        let _ = self.inputs.send(Input::Stop);
        let poller = self.poller;
        let _ = tokio::task::spawn_blocking(move || poller.join()).await;
        if let Some((_, tx, task)) = self.server {
            let _ = tx.send(());
            let _ = tokio::time::timeout(std::time::Duration::from_secs(5), task).await;
        }
        tracing::info!("flushing metrics");
        self.telemetry.shutdown(self.flush_grace).await;
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

/// Runs the sidecar with its endpoint until `shutdown` resolves.
pub async fn run(
    settings: Settings,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), RunError> {
    let mut sidecar = start(&settings, StartOptions { serve_http: true }).await?;
    let failed = tokio::select! {
        _ = shutdown => None,
        e = sidecar.failed() => Some(e),
    };
    sidecar.stop().await;
    match failed {
        Some(e) => Err(e),
        None => Ok(()),
    }
}
