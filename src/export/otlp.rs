//! The push side: an OTLP metric exporter (gRPC through tonic, or HTTP/protobuf through our own
//! client), wrapped in [`Watched`], which turns export results into one warning per outage, one
//! note on recovery and the `fix_monitor_export_errors_total{exporter="otlp"}` counter, and
//! driven by the SDK's `PeriodicReader`.
//!
//! # Failure behaviour (opentelemetry-otlp 0.33 and opentelemetry_sdk 0.33, read from source)
//! - One export retries by itself: `RetryPolicy::recommended()` (3 retries, 100 ms doubling to
//!   1.6 s, jitter), for retryable errors only (connection failures, gRPC `UNAVAILABLE` and
//!   the like, HTTP 429/502/503/504, honouring `Retry-After`/`RetryInfo`), all within the
//!   export `timeout`. In 0.33 this is always on: there is no retry feature to enable.
//! - The `PeriodicReader` does not retry beyond that and keeps nothing: it collects into one
//!   reused buffer, exports, and on failure drops the batch. With cumulative temporality (the
//!   default) the next export carries the totals since start, so an outage loses resolution,
//!   never counts; with delta, the changes in failed exports are lost. Memory stays bounded
//!   either way: nothing queues up while the collector is away.
//! - Polling never waits for an export: exports run on the reader's own thread.
//!
//! # Why our own HTTP client
//! The crate's default HTTP client is a blocking reqwest 0.13 client, whose runtime panics when
//! dropped inside ours. `HttpClient` below runs reqwest's async client on our runtime instead, from
//! the reader's thread, and sets the configured headers.
//!
//! # One reader of the environment
//! Every value the exporter needs is passed explicitly, from `config`. The library would still
//! read some `OTEL_EXPORTER_OTLP_*` variables itself (headers, compression, insecure), so the
//! binary withholds them once the configuration is loaded (`startup::withhold_library_env`);
//! a test below shows both that the library reads them and that it no longer can.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use opentelemetry::metrics::Meter;
use opentelemetry::KeyValue;
use opentelemetry_otlp::{MetricExporter, WithExportConfig, WithHttpConfig, WithTonicConfig};
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::metrics::data::ResourceMetrics;
use opentelemetry_sdk::metrics::exporter::PushMetricExporter;
use opentelemetry_sdk::metrics::{PeriodicReader, Temporality};

use crate::config::{OtlpProtocol, OtlpSettings, OtlpTemporality};
use crate::instruments::{attrs, names};

/// The value of the `exporter` attribute on the self-metrics.
pub const EXPORTER: &str = "otlp";

/// Largest collector response read (what opentelemetry-http's own clients allow).
const MAX_RESPONSE_BYTES: usize = 4 * 1024 * 1024;

/// Why the OTLP exporter could not be built.
#[derive(Debug, thiserror::Error)]
pub enum OtlpError {
    #[error("cannot read {what} {}: {source}", path.display())]
    ReadTls {
        what: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("TLS setup for {url}: {message}")]
    Tls { url: String, message: String },
    #[error("the OTLP exporter for {url}: {source}")]
    Build {
        url: String,
        source: opentelemetry_otlp::ExporterBuildError,
    },
    #[error("the OTLP/HTTP client needs a tokio runtime (build the telemetry inside one)")]
    NoRuntime,
}

/// The running exporter's shared state: what the self-metric and the shutdown path read.
#[derive(Debug, Clone)]
pub struct Otlp {
    health: Arc<ExportHealth>,
}

impl Otlp {
    /// Where exports go.
    pub fn url(&self) -> &str {
        &self.health.url
    }

    /// Exports that failed since start (after the exporter's own retries).
    pub fn failed_exports(&self) -> u64 {
        self.health.failures.load(Ordering::Relaxed)
    }

    /// Whether the last export failed.
    pub fn in_outage(&self) -> bool {
        self.health.lock().is_some()
    }

    /// Registers `fix_monitor_export_errors{exporter="otlp"}` (Prometheus:
    /// `fix_monitor_export_errors_total`), read at each collection; with `logs`, the log
    /// exporter's failures too (`exporter="otlp_logs"`) and
    /// `fix_monitor_log_records_dropped`.
    pub fn register(&self, meter: &Meter, logs: Option<&super::logs::OtlpLogs>) {
        let health = self.health.clone();
        let logs = logs.cloned();
        let dropped = logs.clone();
        meter
            .u64_observable_counter(names::EXPORT_ERRORS)
            .with_description(
                "Exports that failed (after the exporter's own retries), by exporter: otlp \
                 (metrics), otlp_logs (session events)",
            )
            .with_callback(move |obs| {
                obs.observe(
                    health.failures.load(Ordering::Relaxed),
                    &[KeyValue::new(attrs::EXPORTER, EXPORTER)],
                );
                if let Some(logs) = &logs {
                    obs.observe(
                        logs.failed_exports(),
                        &[KeyValue::new(attrs::EXPORTER, super::logs::EXPORTER)],
                    );
                }
            })
            .build();
        if let Some(logs) = dropped {
            meter
                .u64_observable_counter(names::LOG_RECORDS_DROPPED)
                .with_description(
                    "Session event log records given up on: the retry backlog was full, or they \
                     were still undelivered at exit",
                )
                .with_callback(move |obs| obs.observe(logs.dropped(), &[]))
                .build();
        }
    }
}

/// Builds the exporter for `settings` and the periodic reader that drives it. Call inside the
/// tokio runtime: the gRPC channel and the HTTP client run their I/O on it.
pub fn reader(settings: &OtlpSettings) -> Result<(PeriodicReader<Watched>, Otlp), OtlpError> {
    let exporter = exporter(settings)?;
    let health = Arc::new(ExportHealth::new(Signal::Metrics, &settings.url));
    let watched = Watched {
        inner: exporter,
        health: health.clone(),
    };
    let reader = PeriodicReader::builder(watched)
        .with_interval(settings.interval)
        .build();
    Ok((reader, Otlp { health }))
}

fn temporality(t: OtlpTemporality) -> Temporality {
    match t {
        OtlpTemporality::Cumulative => Temporality::Cumulative,
        OtlpTemporality::Delta => Temporality::Delta,
        OtlpTemporality::LowMemory => Temporality::LowMemory,
    }
}

fn exporter(s: &OtlpSettings) -> Result<MetricExporter, OtlpError> {
    let build_error = |source| OtlpError::Build {
        url: s.url.clone(),
        source,
    };
    let https = s.url.to_ascii_lowercase().starts_with("https://");
    match s.protocol {
        OtlpProtocol::Grpc => {
            let headers = grpc_metadata(&s.headers);
            let mut builder = MetricExporter::builder()
                .with_tonic()
                .with_endpoint(s.url.clone())
                .with_timeout(s.timeout)
                .with_temporality(temporality(s.temporality))
                .with_interceptor(move |mut request: tonic::Request<()>| {
                    for (key, value) in &headers {
                        request.metadata_mut().insert(key.clone(), value.clone());
                    }
                    Ok(request)
                });
            if https {
                builder = builder.with_tls_config(grpc_tls(s)?);
            }
            builder.build().map_err(build_error)
        }
        OtlpProtocol::HttpProtobuf => {
            let client = HttpClient::new(s)?;
            MetricExporter::builder()
                .with_http()
                .with_endpoint(s.url.clone())
                .with_timeout(s.timeout)
                .with_protocol(opentelemetry_otlp::Protocol::HttpBinary)
                .with_temporality(temporality(s.temporality))
                .with_http_client(client)
                .build()
                .map_err(build_error)
        }
    }
}

/// The configured headers as ASCII gRPC metadata (validated by the config already; an entry
/// that still does not convert is skipped rather than failing the start).
pub(super) fn grpc_metadata(
    headers: &BTreeMap<String, String>,
) -> Vec<(
    tonic::metadata::MetadataKey<tonic::metadata::Ascii>,
    tonic::metadata::MetadataValue<tonic::metadata::Ascii>,
)> {
    headers
        .iter()
        .filter_map(|(k, v)| Some((k.parse().ok()?, v.parse().ok()?)))
        .collect()
}

pub(super) fn read_pem(what: &'static str, path: &Path) -> Result<Vec<u8>, OtlpError> {
    std::fs::read(path).map_err(|source| OtlpError::ReadTls {
        what,
        path: path.to_path_buf(),
        source,
    })
}

/// The configured CA, else the system's roots; and the client identity, if configured.
pub(super) fn grpc_tls(
    s: &OtlpSettings,
) -> Result<opentelemetry_otlp::tonic_types::transport::ClientTlsConfig, OtlpError> {
    use opentelemetry_otlp::tonic_types::transport::{Certificate, ClientTlsConfig, Identity};
    let mut tls = ClientTlsConfig::new();
    tls = match &s.tls.ca_file {
        Some(ca) => tls.ca_certificate(Certificate::from_pem(read_pem("the CA file", ca)?)),
        // Fails the start if the host has no trust roots at all: better than every export.
        None => tls.with_native_roots(),
    };
    if let (Some(cert), Some(key)) = (&s.tls.cert_file, &s.tls.key_file) {
        let cert = read_pem("the client certificate", cert)?;
        let key = read_pem("the client key", key)?;
        tls = tls.identity(Identity::from_pem(cert, key));
    }
    Ok(tls)
}

/// OTLP/HTTP through reqwest's async client on our runtime. The exporter calls it from the
/// periodic reader's thread, which has no runtime: each request is spawned onto ours.
#[derive(Debug)]
pub(super) struct HttpClient {
    client: reqwest::Client,
    headers: http::HeaderMap,
    runtime: tokio::runtime::Handle,
}

impl HttpClient {
    pub(super) fn new(s: &OtlpSettings) -> Result<HttpClient, OtlpError> {
        let tls_error = |message: String| OtlpError::Tls {
            url: s.url.clone(),
            message,
        };
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| OtlpError::NoRuntime)?;
        let mut builder = reqwest::Client::builder()
            .use_rustls_tls()
            .timeout(s.timeout)
            .connect_timeout(s.timeout)
            // A collector behind a proxy variable meant for something else is a surprise.
            .no_proxy();
        if let Some(ca) = &s.tls.ca_file {
            // As for gRPC: the configured CA replaces the system's roots.
            let pem = read_pem("the CA file", ca)?;
            let certs = reqwest::Certificate::from_pem_bundle(&pem)
                .map_err(|e| tls_error(format!("{}: {e}", ca.display())))?;
            builder = builder.tls_built_in_root_certs(false);
            for cert in certs {
                builder = builder.add_root_certificate(cert);
            }
        }
        if let (Some(cert), Some(key)) = (&s.tls.cert_file, &s.tls.key_file) {
            let mut pem = read_pem("the client certificate", cert)?;
            pem.push(b'\n');
            pem.extend(read_pem("the client key", key)?);
            let identity = reqwest::Identity::from_pem(&pem)
                .map_err(|e| tls_error(format!("client certificate and key: {e}")))?;
            builder = builder.identity(identity);
        }
        let client = builder
            .build()
            .map_err(|e| tls_error(format!("building the HTTP client: {e}")))?;
        let headers = s
            .headers
            .iter()
            .filter_map(|(k, v)| {
                Some((
                    http::HeaderName::from_bytes(k.as_bytes()).ok()?,
                    http::HeaderValue::from_str(v).ok()?,
                ))
            })
            .collect();
        Ok(HttpClient {
            client,
            headers,
            runtime,
        })
    }
}

#[async_trait::async_trait]
impl opentelemetry_http::HttpClient for HttpClient {
    async fn send_bytes(
        &self,
        mut request: http::Request<Bytes>,
    ) -> Result<http::Response<Bytes>, opentelemetry_http::HttpError> {
        for (name, value) in &self.headers {
            request.headers_mut().insert(name.clone(), value.clone());
        }
        let request = reqwest::Request::try_from(request)?;
        let client = self.client.clone();
        let task = self.runtime.spawn(async move {
            let mut response = client.execute(request).await?;
            let mut body = Vec::new();
            while let Some(chunk) = response.chunk().await? {
                if body.len() + chunk.len() > MAX_RESPONSE_BYTES {
                    return Err(opentelemetry_http::HttpError::from(
                        opentelemetry_http::ResponseBodyTooLarge::new(),
                    ));
                }
                body.extend_from_slice(&chunk);
            }
            let mut out = http::Response::builder()
                .status(response.status())
                .body(Bytes::from(body))?;
            *out.headers_mut() = std::mem::take(response.headers_mut());
            Ok(out)
        });
        task.await?
    }
}

/// Which OTLP signal an exporter carries: its outage lines say which.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Signal {
    Metrics,
    /// Session events (`export::logs`).
    Logs,
}

/// Outage state shared by the exporter decorator and the [`Otlp`] handle.
#[derive(Debug)]
pub(super) struct ExportHealth {
    signal: Signal,
    pub(super) url: String,
    pub(super) failures: AtomicU64,
    /// Present while exports fail: since when, and how many failed.
    outage: Mutex<Option<Outage>>,
}

#[derive(Debug, Clone, Copy)]
struct Outage {
    since: Instant,
    failed: u64,
}

impl ExportHealth {
    pub(super) fn new(signal: Signal, url: &str) -> ExportHealth {
        ExportHealth {
            signal,
            url: url.to_owned(),
            failures: AtomicU64::new(0),
            outage: Mutex::new(None),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<Outage>> {
        self.outage.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// One warning when an outage starts, one note when it ends; every failure counted.
    pub(super) fn record(&self, result: &OTelSdkResult, now: Instant) {
        let mut outage = self.lock();
        match (result, outage.as_mut()) {
            (Ok(()), None) => {}
            (Ok(()), Some(o)) => {
                let took = humantime::format_duration(round_to_ms(now - o.since));
                match self.signal {
                    Signal::Metrics => tracing::info!(
                        url = %self.url, outage = %took, failed_exports = o.failed,
                        "OTLP export recovered"
                    ),
                    Signal::Logs => tracing::info!(
                        url = %self.url, outage = %took, failed_exports = o.failed,
                        "OTLP log export recovered: the records kept meanwhile are delivered"
                    ),
                }
                *outage = None;
            }
            (Err(e), None) => {
                self.failures.fetch_add(1, Ordering::Relaxed);
                match self.signal {
                    Signal::Metrics => tracing::warn!(
                        url = %self.url,
                        error = %e,
                        "OTLP export failed; polling goes on and every export interval tries again \
                         (further failures are only counted, in fix_monitor_export_errors_total, \
                         until one succeeds)"
                    ),
                    Signal::Logs => tracing::warn!(
                        url = %self.url,
                        error = %e,
                        "OTLP log export failed; the session events are kept (a bounded backlog) \
                         and sent again every export interval (further failures are only counted, \
                         in fix_monitor_export_errors_total{{exporter=\"otlp_logs\"}}, until one \
                         succeeds)"
                    ),
                }
                *outage = Some(Outage {
                    since: now,
                    failed: 1,
                });
            }
            (Err(e), Some(o)) => {
                self.failures.fetch_add(1, Ordering::Relaxed);
                o.failed += 1;
                tracing::debug!(url = %self.url, signal = ?self.signal, error = %e, failed_exports = o.failed, "OTLP export failed again");
            }
        }
    }
}

fn round_to_ms(d: Duration) -> Duration {
    Duration::from_millis(u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// The OTLP exporter, watched: each export's result goes to the outage tracking (one warning
/// per outage, the error counter); everything else passes through.
#[derive(Debug)]
pub struct Watched {
    inner: MetricExporter,
    health: Arc<ExportHealth>,
}

impl PushMetricExporter for Watched {
    async fn export(&self, metrics: &ResourceMetrics) -> OTelSdkResult {
        let result = self.inner.export(metrics).await;
        self.health.record(&result, Instant::now());
        result
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.inner.force_flush()
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn temporality(&self) -> Temporality {
        self.inner.temporality()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn health() -> ExportHealth {
        ExportHealth::new(Signal::Metrics, "http://c:4317")
    }

    fn fail() -> OTelSdkResult {
        Err(opentelemetry_sdk::error::OTelSdkError::InternalFailure(
            "connection refused".into(),
        ))
    }

    #[test]
    fn an_outage_is_counted_per_failure_and_ends_on_the_first_success() {
        let h = health();
        let t0 = Instant::now();
        h.record(&Ok(()), t0);
        assert!(h.lock().is_none());
        for i in 0..3 {
            h.record(&fail(), t0 + Duration::from_secs(i));
        }
        assert_eq!(h.failures.load(Ordering::Relaxed), 3);
        let o = h.lock().unwrap();
        assert_eq!((o.since, o.failed), (t0, 3));
        h.record(&Ok(()), t0 + Duration::from_secs(10));
        assert!(h.lock().is_none());
        h.record(&fail(), t0 + Duration::from_secs(11));
        assert_eq!(h.failures.load(Ordering::Relaxed), 4);
        assert_eq!(h.lock().unwrap().failed, 1);
    }

    /// One export to a bare HTTP listener; returns the request's head (request line and
    /// headers), lower-cased.
    fn head_of_one_export(headers: &[(&str, &str)]) -> String {
        use opentelemetry::metrics::MeterProvider as _;
        use std::io::{Read, Write};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let server = std::thread::spawn(move || {
            let (mut stream, _) = listener.accept().unwrap();
            let mut head = Vec::new();
            let mut byte = [0u8; 1];
            while !head.ends_with(b"\r\n\r\n") && stream.read(&mut byte).unwrap() == 1 {
                head.push(byte[0]);
            }
            let _ = stream.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n");
            String::from_utf8_lossy(&head).to_ascii_lowercase()
        });
        let settings = OtlpSettings {
            enabled: true,
            endpoint: format!("http://{addr}"),
            url: format!("http://{addr}/v1/metrics"),
            protocol: OtlpProtocol::HttpProtobuf,
            interval: Duration::from_secs(3600),
            timeout: Duration::from_secs(5),
            headers: headers
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            temporality: OtlpTemporality::Cumulative,
            logs: false,
            tls: Default::default(),
        };
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let (reader, _otlp) = rt.block_on(async { reader(&settings) }).unwrap();
        let provider = opentelemetry_sdk::metrics::SdkMeterProvider::builder()
            .with_reader(reader)
            .build();
        provider.meter("test").u64_counter("c").build().add(1, &[]);
        let _ = provider.force_flush();
        let head = server.join().unwrap();
        let _ = provider.shutdown();
        head
    }

    /// The library merges `OTEL_EXPORTER_OTLP_HEADERS` into every request by itself (the
    /// control half shows it does); once config has withheld the library's variables
    /// (`startup::withhold_library_env`, which the binary calls after loading), only the
    /// configured headers go out.
    #[test]
    fn the_exporter_cannot_read_the_environment_once_config_withholds_it() {
        std::env::set_var("OTEL_EXPORTER_OTLP_HEADERS", "x-leak=1");
        let head = head_of_one_export(&[("x-tenant", "cfg")]);
        assert!(
            head.contains("x-leak: 1"),
            "control: the library reads it\n{head}"
        );

        let withheld = crate::startup::withhold_library_env();
        assert!(withheld
            .iter()
            .any(|(n, _)| n == "OTEL_EXPORTER_OTLP_HEADERS"));
        let head = head_of_one_export(&[("x-tenant", "cfg")]);
        assert!(head.starts_with("post /v1/metrics"), "{head}");
        assert!(head.contains("x-tenant: cfg"), "{head}");
        assert!(!head.contains("x-leak"), "{head}");
    }
}
