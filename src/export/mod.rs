//! Where the numbers go: the meter provider and its readers, and the HTTP endpoints.
//!
//! - `prometheus`: the pull side: a Prometheus registry fed by the OpenTelemetry exporter,
//!   encoded on `/metrics`.
//! - `http`: the endpoint itself: `/metrics`, `/health`, `/connections` and `/`.

pub mod http;
pub mod prometheus;

use opentelemetry_sdk::metrics::SdkMeterProvider;

/// The meter provider and what reads from it. Built once at start; shut down once at exit so
/// that every reader flushes.
pub struct Telemetry {
    pub provider: SdkMeterProvider,
    /// Present when the Prometheus pull endpoint is enabled.
    pub prometheus: Option<::prometheus::Registry>,
}

impl Telemetry {
    /// Builds the provider with a reader for each enabled exporter.
    pub fn new(
        resource: opentelemetry_sdk::Resource,
        host: &str,
        prometheus_enabled: bool,
    ) -> Result<Telemetry, opentelemetry_sdk::error::OTelSdkError> {
        let mut builder = SdkMeterProvider::builder().with_resource(resource);
        let mut registry = None;
        if prometheus_enabled {
            let (reader, r) = prometheus::reader(host)?;
            builder = builder.with_reader(reader);
            registry = Some(r);
        }
        Ok(Telemetry {
            provider: builder.build(),
            prometheus: registry,
        })
    }

    /// Flushes and shuts down every reader (the last export happens here).
    pub fn shutdown(&self) {
        if let Err(e) = self.provider.shutdown() {
            tracing::warn!(error = %e, "meter provider shutdown failed");
        }
    }
}
