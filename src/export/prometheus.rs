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

/// The text exposition format (what `/metrics` serves), into a buffer of `size_hint` bytes
/// (the last body's size: one allocation, not a doubling series). Gathering builds every
/// series' labels as owned strings (at 1,000 sessions with per-port series, thousands of
/// small allocations, about 3 MiB); once they are freed, the free pages go back to the
/// kernel, or the allocator keeps them as RSS.
pub fn encode(registry: &Registry, size_hint: usize) -> Result<String, prometheus::Error> {
    let families = registry.gather();
    let mut buf = Vec::with_capacity(size_hint);
    TextEncoder::new().encode(&families, &mut buf)?;
    drop(families);
    #[cfg(target_env = "gnu")]
    {
        // SAFETY: malloc_trim only releases free heap memory; no pointer is involved.
        unsafe { libc::malloc_trim(0) };
    }
    // The encoder writes the registry's strings, which are UTF-8: no copy.
    Ok(String::from_utf8(buf)
        .unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned()))
}

pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";
