//! The running sidecar: the poll loop, and the one shutdown path.
//!
//! `run` opens the connection source and binds the HTTP endpoint first, so that a source that
//! does not work or an address that is taken fails the start instead of leaving a sidecar that
//! silently reports nothing. Then the poll loop runs on its own thread (a poll is a few blocking
//! syscalls; it must not wait behind HTTP work, nor HTTP work behind it) at a fixed rate, and the
//! endpoint serves on the tokio runtime. On shutdown: polling stops, the endpoint drains, the
//! meter provider flushes every exporter, and `run` returns.

use std::future::Future;
use std::sync::mpsc::{self, RecvTimeoutError};
use std::time::{Duration, Instant};

use crate::config::Settings;
use crate::export::{http, Telemetry};
use crate::instruments::{GaugeValues, Instruments};
use crate::source::{self, Source};
use crate::status::Shared;
use crate::tracker::{Event, Timestamp};

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("cannot open the connection source: {0}")]
    Source(#[from] source::SourceError),
    #[error("{0}")]
    Listen(std::io::Error),
    #[error("cannot set up OpenTelemetry: {0}")]
    Telemetry(#[from] opentelemetry_sdk::error::OTelSdkError),
    #[error("HTTP endpoint failed: {0}")]
    Serve(std::io::Error),
}

/// This host's name, as the metrics and endpoints report it.
pub fn hostname() -> String {
    gethostname::gethostname().to_string_lossy().into_owned()
}

/// Runs the sidecar until `shutdown` resolves.
pub async fn run(
    settings: Settings,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), RunError> {
    let host = hostname();
    let source = source::open(settings.poll.source, &settings.targets)?;
    let listener = http::bind(settings.prometheus.listen)
        .await
        .map_err(RunError::Listen)?;
    let local = listener.local_addr().map_err(RunError::Listen)?;

    let telemetry = Telemetry::new(&host, settings.prometheus.enabled)?;
    let meter = opentelemetry::metrics::MeterProvider::meter(
        &telemetry.provider,
        crate::instruments::names::METER,
    );
    let instruments = Instruments::new(&meter, &settings.targets, source.kind());
    let shared = Shared::new(
        settings.targets.clone(),
        source.kind(),
        settings.poll.interval,
        host.clone(),
        Timestamp::now(),
    );

    tracing::info!(
        host = %host,
        source = source.kind().as_str(),
        interval = %humantime::format_duration(settings.poll.interval),
        targets = %settings.targets.iter().map(|t| t.name.as_str()).collect::<Vec<_>>().join(", "),
        "fix-monitor started"
    );
    tracing::info!(
        "listening on http://{local} (/metrics{}, /health, /connections)",
        if settings.prometheus.enabled {
            ""
        } else {
            " disabled"
        }
    );

    let (stop_tx, stop_rx) = mpsc::channel::<()>();
    let poller = {
        let shared = shared.clone();
        let interval = settings.poll.interval;
        std::thread::Builder::new()
            .name("fix-monitor-poll".into())
            .spawn(move || poll_loop(source, shared, instruments, interval, stop_rx))
            .expect("spawning the poll thread")
    };

    let (http_stop_tx, http_stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(http::serve(
        listener,
        http::router(shared.clone(), telemetry.prometheus.clone()),
        async move {
            let _ = http_stop_rx.await;
        },
    ));

    // Whichever comes first: the shutdown signal, or the endpoint failing.
    tokio::pin!(shutdown);
    let served = tokio::select! {
        _ = &mut shutdown => None,
        r = &mut Box::pin(server) => Some(r),
    };
    tracing::info!("shutting down: stopping the poll loop");
    drop(stop_tx);
    let _ = tokio::task::spawn_blocking(move || poller.join()).await;
    let _ = http_stop_tx.send(());
    tracing::info!("flushing metrics");
    telemetry.shutdown();
    let totals = shared.lock().targets();
    for t in totals {
        tracing::info!(target_name = %t.name, opened = t.stats.opened, closed = t.stats.closed, peak = t.stats.peak, "totals");
    }
    match served {
        Some(Ok(Err(e))) => Err(RunError::Serve(e)),
        _ => Ok(()),
    }
}

/// Polls at a fixed rate until the stop channel closes. A failed poll is logged and counted,
/// and the connections it could not see are left as they were: a failed poll is not a close.
fn poll_loop(
    mut source: Box<dyn Source>,
    shared: Shared,
    instruments: Instruments,
    interval: Duration,
    stop: mpsc::Receiver<()>,
) {
    let kind = source.kind();
    let mut sockets = Vec::new();
    let mut events = Vec::new();
    let mut next = Instant::now();
    loop {
        let began = Instant::now();
        let result = source.poll(&mut sockets);
        let at = Timestamp::now();
        instruments.record_poll(kind, began.elapsed(), result.is_ok());
        events.clear();
        let mut gauges = None;
        {
            let mut m = shared.lock();
            m.health.polls += 1;
            match &result {
                Ok(()) => {
                    if m.health.consecutive_failures > 0 {
                        tracing::info!(
                            failed_polls = m.health.consecutive_failures,
                            "polling recovered"
                        );
                    }
                    m.tracker.apply(at, &sockets, &mut events);
                    m.remember_closed(&events);
                    m.health.last_success = Some(at);
                    m.health.consecutive_failures = 0;
                    let (values, capped) = GaugeValues::from_tracker(&m.tracker);
                    if capped {
                        tracing::warn!(
                            limit = crate::instruments::BY_PORT_LIMIT,
                            "fix_connections_by_port: too many local ports, some left out"
                        );
                    }
                    gauges = Some(values);
                }
                Err(e) => {
                    m.health.consecutive_failures += 1;
                    m.health.last_error = Some(e.to_string());
                    // One warning when an outage starts, then one a minute's worth of polls.
                    let n = m.health.consecutive_failures;
                    if n == 1 || n % 60 == 0 {
                        tracing::warn!(source = kind.as_str(), error = %e, failed_polls = n, "poll failed");
                    }
                }
            }
            if !events.is_empty() {
                log_events(&events, &m.tracker);
            }
        }
        instruments.record_events(&events);
        if let Some(g) = gauges {
            instruments.set_gauges(g);
        }

        next += interval;
        let now = Instant::now();
        if next < now {
            // Fell behind (a slow poll, a suspended host): start afresh rather than burst.
            next = now + interval;
        }
        match stop.recv_timeout(next - now) {
            Err(RecvTimeoutError::Timeout) => continue,
            _ => return,
        }
    }
}

fn log_events(events: &[Event], tracker: &crate::tracker::Tracker) {
    for e in events {
        match e {
            Event::Opened(c) => tracing::info!(
                target_name = %tracker.targets().get(c.target).name,
                local = %c.key.local,
                remote = %c.key.remote,
                preexisting = c.preexisting,
                "connection opened"
            ),
            Event::Closed { conn, duration, .. } => tracing::info!(
                target_name = %tracker.targets().get(conn.target).name,
                local = %conn.key.local,
                remote = %conn.key.remote,
                duration = %crate::status::hms(*duration),
                duration_seconds = duration.as_secs_f64(),
                "connection closed"
            ),
        }
    }
}
