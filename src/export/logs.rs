//! The push side of session events (`session_events`): a logger provider whose
//! `BatchLogProcessor` feeds an OTLP log exporter (gRPC, or HTTP/protobuf through the same
//! client as the metrics, `otlp::HttpClient`), wrapped in [`Retained`], which keeps what a
//! failed export carried and sends it again.
//!
//! # Failure behaviour
//! Metrics survive an outage by being cumulative: the next export carries the totals. Log
//! records are not: opentelemetry_sdk 0.33's `BatchLogProcessor` (read from source) exports
//! a batch once, through the exporter's own retries (`RetryPolicy::recommended()` within the
//! export `timeout`, as for metrics), and drops it on failure; and it calls the exporter only
//! when new records are queued. So [`Retained`]:
//! - keeps every record of a failed export in a backlog of at most [`BACKLOG`] records (the
//!   oldest beyond it are dropped and counted in `fix_monitor_log_records_dropped`), and sends
//!   the backlog first at the next export, in order;
//! - from the first failure on, also tries the backlog every `[otlp] interval` by itself, so
//!   that records arrive after the collector comes back even when no new event follows;
//! - at shutdown (after the processor's last export) tries the backlog once more; what still
//!   fails is dropped and counted.
//!
//! The processor's own queue ([`QUEUE`] records, between an event and the next export) drops
//! records when it is full, which needs more than [`QUEUE`] events while one export hangs for
//! up to `timeout`; the SDK keeps that count to itself (and warns at shutdown, in its own logs,
//! which the log filter turns off by default), so it is not in the counter.
//!
//! Every failed export is counted in `fix_monitor_export_errors{exporter="otlp_logs"}`, with one
//! warning per outage and one note when it ends, as for metrics.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use opentelemetry::InstrumentationScope;
use opentelemetry_otlp::{LogExporter, WithExportConfig, WithHttpConfig, WithTonicConfig};
use opentelemetry_sdk::error::{OTelSdkError, OTelSdkResult};
use opentelemetry_sdk::logs::{
    BatchConfigBuilder, BatchLogProcessor, LogBatch, SdkLogRecord, SdkLoggerProvider,
};
use tokio_util::sync::CancellationToken;

use super::otlp::{grpc_metadata, grpc_tls, ExportHealth, HttpClient, OtlpError, Signal};
use crate::config::{OtlpProtocol, OtlpSettings};

/// The value of the `exporter` attribute on the export error counter.
pub const EXPORTER: &str = "otlp_logs";

/// Records kept across failed exports: about 1 KiB each, so a collector that never takes
/// them (a metrics-only backend) costs at most about 1 MiB.
pub const BACKLOG: usize = 1024;

/// The batch processor's queue: records between an event and the next export.
pub const QUEUE: usize = 1024;

/// Records per export (the processor's batches, and the backlog's chunks).
const BATCH: usize = 512;

/// How long a record waits for its export at most when events are few.
const DELAY: Duration = Duration::from_secs(1);

/// Where OTLP/HTTP log exports go: the metrics URL with `/v1/logs` for `/v1/metrics`, else
/// `/v1/logs` appended. gRPC: the same endpoint.
pub fn logs_url(s: &OtlpSettings) -> String {
    match s.protocol {
        OtlpProtocol::Grpc => s.url.clone(),
        OtlpProtocol::HttpProtobuf => match s.url.strip_suffix("/v1/metrics") {
            Some(base) => format!("{base}/v1/logs"),
            None => format!("{}/v1/logs", s.url.trim_end_matches('/')),
        },
    }
}

/// The running log export's shared state: what the self-metrics and the shutdown path read.
#[derive(Debug, Clone)]
pub struct OtlpLogs {
    shared: Arc<Shared>,
}

impl OtlpLogs {
    pub fn url(&self) -> &str {
        &self.shared.health.url
    }

    /// Exports that failed since start (after the exporter's own retries).
    pub fn failed_exports(&self) -> u64 {
        self.shared.health.failures.load(Ordering::Relaxed)
    }

    /// Records given up on: the backlog overflowed, or still undelivered at exit.
    pub fn dropped(&self) -> u64 {
        self.shared.dropped.load(Ordering::Relaxed)
    }

    /// Records delivered to the collector.
    pub fn delivered(&self) -> u64 {
        self.shared.delivered.load(Ordering::Relaxed)
    }
}

type Item = (SdkLogRecord, InstrumentationScope);

#[derive(Debug)]
struct Shared {
    health: ExportHealth,
    /// Records of failed exports, oldest first. An async mutex: held across an export, so
    /// that the processor's exports and the retries go one at a time and in order.
    backlog: tokio::sync::Mutex<VecDeque<Item>>,
    dropped: AtomicU64,
    delivered: AtomicU64,
}

/// Builds the logger provider with its exporter. Call inside the tokio runtime, as
/// `otlp::reader`.
pub fn provider(
    settings: &OtlpSettings,
    resource: opentelemetry_sdk::Resource,
) -> Result<(SdkLoggerProvider, OtlpLogs), OtlpError> {
    let url = logs_url(settings);
    let inner = exporter(settings, &url)?;
    let shared = Arc::new(Shared {
        health: ExportHealth::new(Signal::Logs, &url),
        backlog: tokio::sync::Mutex::new(VecDeque::new()),
        dropped: AtomicU64::new(0),
        delivered: AtomicU64::new(0),
    });
    let retained = Retained {
        inner: Arc::new(inner),
        shared: shared.clone(),
        runtime: tokio::runtime::Handle::try_current().map_err(|_| OtlpError::NoRuntime)?,
        interval: settings.interval,
        retrying: AtomicBool::new(false),
        stop: CancellationToken::new(),
    };
    // Every value explicit: the builder's defaults would read OTEL_BLRP_* themselves (its
    // export timeout is only used by the experimental async processor; ours is `timeout`).
    let config = BatchConfigBuilder::default()
        .with_max_queue_size(QUEUE)
        .with_max_export_batch_size(BATCH)
        .with_scheduled_delay(DELAY)
        .build();
    let processor = BatchLogProcessor::builder(retained)
        .with_batch_config(config)
        .build();
    let provider = SdkLoggerProvider::builder()
        .with_resource(resource)
        .with_log_processor(processor)
        .build();
    Ok((provider, OtlpLogs { shared }))
}

fn exporter(s: &OtlpSettings, url: &str) -> Result<LogExporter, OtlpError> {
    let build_error = |source| OtlpError::Build {
        url: url.to_owned(),
        source,
    };
    match s.protocol {
        OtlpProtocol::Grpc => {
            let headers = grpc_metadata(&s.headers);
            let mut builder = LogExporter::builder()
                .with_tonic()
                .with_endpoint(url.to_owned())
                .with_timeout(s.timeout)
                .with_interceptor(move |mut request: tonic::Request<()>| {
                    for (key, value) in &headers {
                        request.metadata_mut().insert(key.clone(), value.clone());
                    }
                    Ok(request)
                });
            if url.to_ascii_lowercase().starts_with("https://") {
                builder = builder.with_tls_config(grpc_tls(s)?);
            }
            builder.build().map_err(build_error)
        }
        OtlpProtocol::HttpProtobuf => LogExporter::builder()
            .with_http()
            .with_endpoint(url.to_owned())
            .with_timeout(s.timeout)
            .with_protocol(opentelemetry_otlp::Protocol::HttpBinary)
            .with_http_client(HttpClient::new(s)?)
            .build()
            .map_err(build_error),
    }
}

/// The OTLP log exporter with a backlog: see the module docs.
#[derive(Debug)]
pub struct Retained {
    /// Shared with the retry task, which starts at the first failure: by then the processor
    /// has handed the exporter its resource (`set_resource` needs the only reference).
    inner: Arc<LogExporter>,
    shared: Arc<Shared>,
    runtime: tokio::runtime::Handle,
    interval: Duration,
    retrying: AtomicBool,
    stop: CancellationToken,
}

impl Shared {
    /// Sends the backlog in batches, oldest first; stops at the first failure, keeping the
    /// rest.
    async fn send(&self, inner: &LogExporter, backlog: &mut VecDeque<Item>) -> OTelSdkResult {
        while !backlog.is_empty() {
            let n = backlog.len().min(BATCH);
            let refs: Vec<(&SdkLogRecord, &InstrumentationScope)> =
                backlog.iter().take(n).map(|(r, s)| (r, s)).collect();
            let result =
                opentelemetry_sdk::logs::LogExporter::export(inner, LogBatch::new(&refs)).await;
            self.health.record(&result, Instant::now());
            result?;
            backlog.drain(..n);
            self.delivered.fetch_add(n as u64, Ordering::Relaxed);
        }
        Ok(())
    }

    /// Drops the oldest records beyond [`BACKLOG`], counted.
    fn trim(&self, backlog: &mut VecDeque<Item>) {
        let over = backlog.len().saturating_sub(BACKLOG);
        if over > 0 {
            backlog.drain(..over);
            self.dropped.fetch_add(over as u64, Ordering::Relaxed);
        }
    }
}

impl Retained {
    /// From the first failure on: tries the backlog every interval, until shutdown.
    fn start_retrying(&self) {
        if self.retrying.swap(true, Ordering::Relaxed) {
            return;
        }
        let (inner, shared, stop) = (self.inner.clone(), self.shared.clone(), self.stop.clone());
        let interval = self.interval;
        self.runtime.spawn(async move {
            loop {
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(interval) => {}
                }
                let mut backlog = shared.backlog.lock().await;
                if !backlog.is_empty() {
                    let _ = shared.send(&inner, &mut backlog).await;
                }
            }
        });
    }
}

impl opentelemetry_sdk::logs::LogExporter for Retained {
    async fn export(&self, batch: LogBatch<'_>) -> OTelSdkResult {
        let mut backlog = self.shared.backlog.lock().await;
        backlog.extend(batch.iter().map(|(r, s)| (r.clone(), s.clone())));
        self.shared.trim(&mut backlog);
        let result = self.shared.send(&self.inner, &mut backlog).await;
        if result.is_err() {
            self.start_retrying();
        }
        result
    }

    /// After the processor's last export: one more try of the backlog (from the processor's
    /// thread, which has no runtime), then what is left is dropped, counted.
    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.stop.cancel();
        let mut last = Ok(());
        if tokio::runtime::Handle::try_current().is_err() {
            let shared = self.shared.clone();
            let inner = self.inner.clone();
            last = self.runtime.block_on(async move {
                let mut backlog = shared.backlog.lock().await;
                let result = match backlog.is_empty() {
                    true => Ok(()),
                    false => shared.send(&inner, &mut backlog).await,
                };
                let left = backlog.len() as u64;
                backlog.clear();
                shared.dropped.fetch_add(left, Ordering::Relaxed);
                if left > 0 {
                    tracing::warn!(
                        records = left,
                        "session events not delivered over OTLP at exit (counted in \
                         fix_monitor_log_records_dropped_total)"
                    );
                }
                result
            });
        }
        let _ = self.inner.shutdown_with_timeout(timeout);
        last.map_err(|e| OTelSdkError::InternalFailure(format!("final log export: {e}")))
    }

    fn set_resource(&mut self, resource: &opentelemetry_sdk::Resource) {
        if let Some(inner) = Arc::get_mut(&mut self.inner) {
            opentelemetry_sdk::logs::LogExporter::set_resource(inner, resource);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(protocol: OtlpProtocol, url: &str) -> OtlpSettings {
        OtlpSettings {
            protocol,
            url: url.to_owned(),
            ..OtlpSettings::default()
        }
    }

    #[test]
    fn the_logs_url_follows_the_metrics_url() {
        let http = OtlpProtocol::HttpProtobuf;
        for (metrics, logs) in [
            ("http://c:4318/v1/metrics", "http://c:4318/v1/logs"),
            (
                "http://c:4318/otlp/v1/metrics",
                "http://c:4318/otlp/v1/logs",
            ),
            ("http://vm:8428/custom/", "http://vm:8428/custom/v1/logs"),
        ] {
            assert_eq!(logs_url(&settings(http, metrics)), logs);
        }
        let grpc = settings(OtlpProtocol::Grpc, "http://c:4317");
        assert_eq!(logs_url(&grpc), "http://c:4317");
    }
}
