//! Where the numbers go: the meter provider and its readers, and the HTTP endpoints.
//!
//! - `prometheus`: the pull side: a Prometheus registry fed by the OpenTelemetry exporter,
//!   encoded on `/metrics`.
//! - `otlp`: the push side: an OTLP exporter (gRPC or HTTP/protobuf) on a periodic reader, with
//!   outage reporting.
//! - `http`: the endpoint itself: `/metrics`, `/health`, `/connections` and `/`.
//!
//! Both exporters are readers of one meter provider, so a scrape and a push see the same
//! instruments; each reader keeps its own aggregation (its own temporality).

pub mod http;
pub mod otlp;
pub mod prometheus;
pub mod server;
pub mod web_config;

use std::time::Duration;

use opentelemetry::metrics::MeterProvider;
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
        let mut builder = SdkMeterProvider::builder().with_resource(resource);
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
        let provider = builder.build();
        if let Some(otlp) = &otlp {
            otlp.register(&provider.meter(crate::instruments::names::METER));
        }
        Ok(Telemetry {
            provider,
            prometheus: registry,
            otlp,
        })
    }

    /// The final export: force-flushes every reader, so that the last values reach the
    /// collector even with a long export interval, then shuts the provider down. Waits at most
    /// `grace`: the flush runs on its own thread, and a collector that hangs is left behind
    /// (with a warning) rather than holding up the exit.
    pub async fn shutdown(&self, grace: Duration) {
        let provider = self.provider.clone();
        let (tx, rx) = tokio::sync::oneshot::channel();
        let spawned = std::thread::Builder::new()
            .name("fix-monitor-flush".into())
            .spawn(move || {
                let flushed = provider.force_flush();
                let shut = provider.shutdown();
                let _ = tx.send((flushed, shut));
            });
        if let Err(e) = spawned {
            tracing::warn!(error = %e, "cannot start the final flush; exiting without it");
            return;
        }
        match tokio::time::timeout(grace, rx).await {
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
