//! Where the numbers go: the meter provider and its readers, and the HTTP endpoints.
//!
//! - `prometheus`: the pull side: a Prometheus registry fed by the OpenTelemetry exporter,
//!   encoded on `/metrics`.
//! - `otlp`: the push side: an OTLP exporter (gRPC or HTTP/protobuf) on a periodic reader, with
//!   outage reporting.
//! - `logs`: session events (`session_events`) as OTLP log records, beside the metrics
//!   (`[otlp] logs`), with a retry backlog.
//! - `http`: the endpoint itself: `/metrics`, `/health`, `/connections` and `/`.
//!
//! Both exporters are readers of one meter provider, so a scrape and a push see the same
//! instruments; each reader keeps its own aggregation (its own temporality).

pub mod http;
pub mod logs;
pub mod otlp;
pub mod prometheus;
pub mod server;
pub mod web_config;

use std::time::Duration;

use opentelemetry::metrics::MeterProvider;
use opentelemetry_sdk::logs::SdkLoggerProvider;
use opentelemetry_sdk::metrics::SdkMeterProvider;

use crate::config::OtlpSettings;

/// Why the telemetry could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    #[error(transparent)]
    Sdk(#[from] opentelemetry_sdk::error::OTelSdkError),
    #[error(transparent)]
    Otlp(#[from] otlp::OtlpError),
}

/// The meter provider and what reads from it. Built once at start; shut down once at exit so
/// that every reader flushes.
pub struct Telemetry {
    pub provider: SdkMeterProvider,
    /// Present when the Prometheus pull endpoint is enabled.
    pub prometheus: Option<::prometheus::Registry>,
    /// Present when OTLP push is enabled.
    pub otlp: Option<otlp::Otlp>,
    /// Present when OTLP push and `[otlp] logs` are on: session events' logger provider.
    pub logs: Option<(SdkLoggerProvider, logs::OtlpLogs)>,
}

impl Telemetry {
    /// Builds the provider with a reader for each enabled exporter. With OTLP on, this must run
    /// inside the tokio runtime (the exporter's I/O runs there).
    pub fn new(
        resource: opentelemetry_sdk::Resource,
        host: &str,
        prometheus_enabled: bool,
        otlp_settings: &OtlpSettings,
    ) -> Result<Telemetry, TelemetryError> {
        let mut builder = SdkMeterProvider::builder().with_resource(resource.clone());
        let mut registry = None;
        if prometheus_enabled {
            let (reader, r) = prometheus::reader(host)?;
            builder = builder.with_reader(reader);
            registry = Some(r);
        }
        let mut otlp = None;
        if otlp_settings.enabled {
            let (reader, handle) = otlp::reader(otlp_settings)?;
            builder = builder.with_reader(reader);
            otlp = Some(handle);
        }
        let logs = match otlp_settings.enabled && otlp_settings.logs {
            true => Some(logs::provider(otlp_settings, resource)?),
            false => None,
        };
        let provider = builder.build();
        if let Some(otlp) = &otlp {
            let meter = provider.meter(crate::instruments::names::METER);
            otlp.register(&meter, logs.as_ref().map(|(_, l)| l));
        }
        Ok(Telemetry {
            provider,
            prometheus: registry,
            otlp,
            logs,
        })
    }

    /// The logger session events go to (`session_events`), when OTLP logs are on.
    pub fn session_logger(&self) -> Option<opentelemetry_sdk::logs::SdkLogger> {
        use opentelemetry::logs::LoggerProvider as _;
        let (provider, _) = self.logs.as_ref()?;
        Some(provider.logger(crate::session_events::SCOPE))
    }

    /// The final export: force-flushes every reader (and the session events' logger
    /// provider), so that the last values and records reach the collector even with a long
    /// export interval, then shuts the providers down. Waits at most `grace`: each flush runs
    /// on its own thread, and a collector that hangs is left behind (with a warning) rather
    /// than holding up the exit.
    pub async fn shutdown(&self, grace: Duration) {
        let provider = self.provider.clone();
        let metrics = flush_on_thread("fix-monitor-flush", move || {
            (provider.force_flush(), provider.shutdown())
        });
        let logs = self.logs.as_ref().map(|(provider, _)| {
            let provider = provider.clone();
            flush_on_thread("fix-monitor-flush-logs", move || {
                (provider.force_flush(), provider.shutdown())
            })
        });
        let logs = async {
            match logs {
                Some(rx) => Some(tokio::time::timeout(grace, rx).await),
                None => None,
            }
        };
        let (metrics, logs) = tokio::join!(tokio::time::timeout(grace, metrics), logs);
        self.report_metrics_flush(metrics, grace);
        if let (Some(result), Some((_, handle))) = (logs, &self.logs) {
            report_logs_flush(handle, result, grace);
        }
    }

    fn report_metrics_flush(&self, result: Flushed, grace: Duration) {
        match result {
            Ok(Ok((flushed, shut))) => {
                match (&self.otlp, flushed) {
                    (Some(otlp), Ok(())) => {
                        tracing::info!(url = otlp.url(), "final OTLP export delivered")
                    }
                    (Some(otlp), Err(e)) => tracing::warn!(
                        url = otlp.url(),
                        error = %e,
                        "final OTLP export failed: the collector lacks the values since the last \
                         successful export"
                    ),
                    (None, Err(e)) => tracing::warn!(error = %e, "final flush failed"),
                    (None, Ok(())) => {}
                }
                if let Err(e) = shut {
                    tracing::debug!(error = %e, "meter provider shutdown reported an error");
                }
            }
            Ok(Err(_)) => tracing::warn!("the final flush ended without a result"),
            Err(_) => tracing::warn!(
                grace = %humantime::format_duration(grace),
                "the final export did not finish within the grace period; exiting without it"
            ),
        }
    }
}

/// What a flush thread sends back (the flush's result, the shutdown's), or why nothing came.
type Flushed = Result<
    Result<(OTelSdkResult, OTelSdkResult), tokio::sync::oneshot::error::RecvError>,
    tokio::time::error::Elapsed,
>;
type OTelSdkResult = opentelemetry_sdk::error::OTelSdkResult;

/// Runs `flush` on a thread of its own; the receiver gets its results. A thread that cannot
/// start drops the sender: the receiver then says so.
fn flush_on_thread(
    name: &str,
    flush: impl FnOnce() -> (OTelSdkResult, OTelSdkResult) + Send + 'static,
) -> tokio::sync::oneshot::Receiver<(OTelSdkResult, OTelSdkResult)> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    let spawned = std::thread::Builder::new()
        .name(name.into())
        .spawn(move || {
            let _ = tx.send(flush());
        });
    if let Err(e) = spawned {
        tracing::warn!(error = %e, "cannot start the final flush; exiting without it");
    }
    rx
}

fn report_logs_flush(logs: &logs::OtlpLogs, result: Flushed, grace: Duration) {
    match result {
        // The processor's last export, then the backlog's last try (in the shutdown).
        Ok(Ok((Ok(()), Ok(())))) => tracing::info!(
            url = logs.url(),
            delivered = logs.delivered(),
            "final OTLP log export delivered"
        ),
        Ok(Ok((flushed, shut))) => tracing::warn!(
            url = logs.url(),
            error = %flushed.and(shut).unwrap_err(),
            dropped = logs.dropped(),
            "final OTLP log export failed: the session events not yet delivered are lost \
             (counted in fix_monitor_log_records_dropped_total)"
        ),
        Ok(Err(_)) => tracing::warn!("the final log flush ended without a result"),
        Err(_) => tracing::warn!(
            grace = %humantime::format_duration(grace),
            "the final log export did not finish within the grace period; exiting without it"
        ),
    }
}
