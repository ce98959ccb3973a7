//! The Prometheus pull side: the OpenTelemetry Prometheus exporter writing into a registry
//! whose constant `host` label marks every series with the host it came from, as the original
//! exporter did (dashboards filter by it; OTLP carries the same fact as `host.name`).

use std::collections::HashMap;

use opentelemetry_prometheus::PrometheusExporter;
use prometheus::{Encoder, Registry, TextEncoder};

/// The label every series carries.
pub const HOST_LABEL: &str = "host";

pub fn reader(
    host: &str,
) -> Result<(PrometheusExporter, Registry), opentelemetry_sdk::error::OTelSdkError> {
    let labels = HashMap::from([(HOST_LABEL.to_string(), host.to_string())]);
    let registry = Registry::new_custom(None, Some(labels))
        .map_err(|e| opentelemetry_sdk::error::OTelSdkError::InternalFailure(e.to_string()))?;
    let exporter = opentelemetry_prometheus::exporter()
        .with_registry(registry.clone())
        // otel_scope_* labels on every series say nothing a FIX desk needs.
        .scope_info_enabled(false)
        .build()?;
    Ok((exporter, registry))
}

/// The text exposition format (what `/metrics` serves).
pub fn encode(registry: &Registry) -> Result<String, prometheus::Error> {
    let mut buf = Vec::new();
    TextEncoder::new().encode(&registry.gather(), &mut buf)?;
    Ok(String::from_utf8_lossy(&buf).into_owned())
}

pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";
