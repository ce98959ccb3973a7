//! A real OTLP metrics and logs receiver for tests: the collector's `MetricsService` and
//! `LogsService`, generated from the OTLP protos (`opentelemetry-proto`), served by tonic on
//! loopback, and on the same port the OTLP/HTTP routes `POST /v1/metrics` and `POST /v1/logs`
//! (protobuf), optionally over TLS with client certificates. It records every
//! `ExportMetricsServiceRequest` exactly as decoded, with the request's metadata or headers,
//! and flattens them into [`Point`]s for assertions; log exports likewise, into [`Record`]s
//! ([`Receiver::records`]).
//!
//! ```ignore
//! let rx = Receiver::start();                        // a free loopback port
//! // ... fix-monitor --otlp-endpoint rx.endpoint() ...
//! rx.wait_for("two active", Duration::from_secs(10), |r| {
//!     r.latest("fix_connections_active", "venue-a").map(|p| p.value) == Some(2.0)
//! });
//! let addr = rx.addr;
//! let seen = rx.stop();                              // closes every connection
//! let rx = Receiver::start_on(addr);                 // the same port again
//! ```
//!
//! It can also answer with an error instead of accepting ([`Receiver::refuse`]). [`Pki`] makes a
//! CA, a server certificate for `localhost`/127.0.0.1 and a client certificate for TLS tests.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use prost::Message;

use opentelemetry_proto::tonic::collector::logs::v1::logs_service_server::{
    LogsService, LogsServiceServer,
};
use opentelemetry_proto::tonic::collector::logs::v1::{
    ExportLogsServiceRequest, ExportLogsServiceResponse,
};
use opentelemetry_proto::tonic::collector::metrics::v1::metrics_service_server::{
    MetricsService, MetricsServiceServer,
};
use opentelemetry_proto::tonic::collector::metrics::v1::{
    ExportMetricsServiceRequest, ExportMetricsServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::{any_value, KeyValue};
use opentelemetry_proto::tonic::metrics::v1::{metric, number_data_point};

/// `AGGREGATION_TEMPORALITY_DELTA` and `_CUMULATIVE` in the OTLP protos.
pub const DELTA: i32 = 1;
pub const CUMULATIVE: i32 = 2;

/// One export as the receiver got it.
#[derive(Debug, Clone)]
pub struct Received {
    pub at: Instant,
    /// `grpc` or `http`.
    pub transport: &'static str,
    /// The gRPC request metadata or HTTP headers, lower-case names.
    pub metadata: BTreeMap<String, String>,
    pub request: ExportMetricsServiceRequest,
}

/// What kind of metric a point belongs to.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Kind {
    Gauge,
    Sum { monotonic: bool, temporality: i32 },
    Histogram { temporality: i32 },
    Other,
}

/// One data point, flattened with its metric and resource.
#[derive(Debug, Clone)]
pub struct Point {
    pub metric: String,
    pub unit: String,
    pub kind: Kind,
    pub attrs: BTreeMap<String, String>,
    pub resource: BTreeMap<String, String>,
    /// Gauge and sum points: the value.
    pub value: f64,
    /// Histogram points.
    pub count: u64,
    pub sum: f64,
    pub bucket_counts: Vec<u64>,
    pub bounds: Vec<f64>,
    pub start_unix_nano: u64,
    pub time_unix_nano: u64,
}

impl Point {
    pub fn target(&self) -> Option<&str> {
        self.attrs.get("target").map(String::as_str)
    }
}

/// Every point of one request.
pub fn points(request: &ExportMetricsServiceRequest) -> Vec<Point> {
    let mut out = Vec::new();
    for rm in &request.resource_metrics {
        let resource = rm
            .resource
            .as_ref()
            .map(|r| attrs(&r.attributes))
            .unwrap_or_default();
        for sm in &rm.scope_metrics {
            for m in &sm.metrics {
                let base = Point {
                    metric: m.name.clone(),
                    unit: m.unit.clone(),
                    kind: Kind::Other,
                    attrs: BTreeMap::new(),
                    resource: resource.clone(),
                    value: f64::NAN,
                    count: 0,
                    sum: f64::NAN,
                    bucket_counts: Vec::new(),
                    bounds: Vec::new(),
                    start_unix_nano: 0,
                    time_unix_nano: 0,
                };
                let number =
                    |kind: Kind, dp: &opentelemetry_proto::tonic::metrics::v1::NumberDataPoint| {
                        Point {
                            kind,
                            attrs: attrs(&dp.attributes),
                            value: match dp.value {
                                Some(number_data_point::Value::AsInt(i)) => i as f64,
                                Some(number_data_point::Value::AsDouble(d)) => d,
                                None => f64::NAN,
                            },
                            start_unix_nano: dp.start_time_unix_nano,
                            time_unix_nano: dp.time_unix_nano,
                            ..base.clone()
                        }
                    };
                match &m.data {
                    Some(metric::Data::Gauge(g)) => {
                        out.extend(g.data_points.iter().map(|dp| number(Kind::Gauge, dp)))
                    }
                    Some(metric::Data::Sum(s)) => {
                        let kind = Kind::Sum {
                            monotonic: s.is_monotonic,
                            temporality: s.aggregation_temporality,
                        };
                        out.extend(s.data_points.iter().map(|dp| number(kind, dp)))
                    }
                    Some(metric::Data::Histogram(h)) => {
                        for dp in &h.data_points {
                            out.push(Point {
                                kind: Kind::Histogram {
                                    temporality: h.aggregation_temporality,
                                },
                                attrs: attrs(&dp.attributes),
                                count: dp.count,
                                sum: dp.sum.unwrap_or(f64::NAN),
                                bucket_counts: dp.bucket_counts.clone(),
                                bounds: dp.explicit_bounds.clone(),
                                start_unix_nano: dp.start_time_unix_nano,
                                time_unix_nano: dp.time_unix_nano,
                                ..base.clone()
                            });
                        }
                    }
                    _ => out.push(base),
                }
            }
        }
    }
    out
}

/// Attributes as text (`port = 5000` becomes `"5000"`).
pub fn attrs(kvs: &[KeyValue]) -> BTreeMap<String, String> {
    kvs.iter()
        .map(|kv| {
            let v = match kv.value.as_ref().and_then(|v| v.value.as_ref()) {
                Some(any_value::Value::StringValue(s)) => s.clone(),
                Some(any_value::Value::IntValue(i)) => i.to_string(),
                Some(any_value::Value::BoolValue(b)) => b.to_string(),
                Some(any_value::Value::DoubleValue(d)) => d.to_string(),
                other => format!("{other:?}"),
            };
            (kv.key.clone(), v)
        })
        .collect()
}

/// One log record as received, flattened with its export.
#[derive(Debug, Clone)]
pub struct Record {
    /// `grpc` or `http`.
    pub transport: &'static str,
    pub event_name: String,
    pub severity_text: String,
    pub body: String,
    pub attrs: BTreeMap<String, String>,
    pub resource: BTreeMap<String, String>,
    pub scope: String,
    pub time_unix_nano: u64,
}

impl Record {
    pub fn attr(&self, key: &str) -> Option<&str> {
        self.attrs.get(key).map(String::as_str)
    }
}

/// Every record of one logs export.
pub fn records(transport: &'static str, request: &ExportLogsServiceRequest) -> Vec<Record> {
    let mut out = Vec::new();
    for rl in &request.resource_logs {
        let resource = (rl.resource.as_ref())
            .map(|r| attrs(&r.attributes))
            .unwrap_or_default();
        for sl in &rl.scope_logs {
            let scope = sl
                .scope
                .as_ref()
                .map(|s| s.name.clone())
                .unwrap_or_default();
            for r in &sl.log_records {
                let body = match r.body.as_ref().and_then(|b| b.value.as_ref()) {
                    Some(any_value::Value::StringValue(s)) => s.clone(),
                    other => format!("{other:?}"),
                };
                out.push(Record {
                    transport,
                    event_name: r.event_name.clone(),
                    severity_text: r.severity_text.clone(),
                    body,
                    attrs: attrs(&r.attributes),
                    resource: resource.clone(),
                    scope: scope.clone(),
                    time_unix_nano: r.time_unix_nano,
                });
            }
        }
    }
    out
}

#[derive(Default)]
struct State {
    received: Vec<Received>,
    /// Log records, in order of arrival.
    records: Vec<Record>,
    /// Log exports received (accepted).
    log_exports: usize,
    /// Answer every export with this status instead of accepting it.
    refuse: Option<tonic::Code>,
}

#[derive(Clone)]
struct Service {
    state: Arc<Mutex<State>>,
}

impl Service {
    /// Records an export, or says which code to refuse it with.
    fn take(
        &self,
        transport: &'static str,
        metadata: BTreeMap<String, String>,
        request: ExportMetricsServiceRequest,
    ) -> Result<(), tonic::Code> {
        let mut state = self.state.lock().unwrap();
        if let Some(code) = state.refuse {
            return Err(code);
        }
        state.received.push(Received {
            at: Instant::now(),
            transport,
            metadata,
            request,
        });
        Ok(())
    }
}

impl Service {
    /// Records a logs export, or says which code to refuse it with.
    fn take_logs(
        &self,
        transport: &'static str,
        request: ExportLogsServiceRequest,
    ) -> Result<(), tonic::Code> {
        let mut state = self.state.lock().unwrap();
        if let Some(code) = state.refuse {
            return Err(code);
        }
        state.log_exports += 1;
        state.records.extend(records(transport, &request));
        Ok(())
    }
}

/// OTLP/HTTP logs: `POST /v1/logs`, as [`http_export`] does for metrics.
async fn http_logs(
    axum::extract::State(service): axum::extract::State<Service>,
    body: axum::body::Bytes,
) -> axum::response::Response {
    use axum::http::{header, StatusCode};
    use axum::response::IntoResponse;
    let request = match ExportLogsServiceRequest::decode(body) {
        Ok(r) => r,
        Err(e) => return (StatusCode::BAD_REQUEST, e.to_string()).into_response(),
    };
    match service.take_logs("http", request) {
        Ok(()) => (
            [(header::CONTENT_TYPE, "application/x-protobuf")],
            ExportLogsServiceResponse {
                partial_success: None,
            }
            .encode_to_vec(),
        )
            .into_response(),
        Err(_) => (StatusCode::SERVICE_UNAVAILABLE, "refused by the test").into_response(),
    }
}

#[tonic::async_trait]
impl LogsService for Service {
    async fn export(
        &self,
        request: tonic::Request<ExportLogsServiceRequest>,
    ) -> Result<tonic::Response<ExportLogsServiceResponse>, tonic::Status> {
        match self.take_logs("grpc", request.into_inner()) {
            Ok(()) => Ok(tonic::Response::new(ExportLogsServiceResponse {
                partial_success: None,
            })),
            Err(code) => Err(tonic::Status::new(code, "refused by the test")),
        }
    }
}

/// OTLP/HTTP: `POST /v1/metrics` with a protobuf body, answered in protobuf; a refusal is a
/// 503, which exporters retry.
async fn http_export(
    axum::extract::State(service): axum::extract::State<Service>,
    headers: axum::http::HeaderMap,
    body: axum::body::Bytes,
) -> axum::response::Response {
    use axum::http::{header, StatusCode};
    use axum::response::IntoResponse;
    let request = match ExportMetricsServiceRequest::decode(body) {
        Ok(r) => r,
        Err(e) => return (StatusCode::BAD_REQUEST, e.to_string()).into_response(),
    };
    let metadata = headers
        .iter()
        .filter_map(|(k, v)| Some((k.as_str().to_owned(), v.to_str().ok()?.to_owned())))
        .collect();
    match service.take("http", metadata, request) {
        Ok(()) => (
            [(header::CONTENT_TYPE, "application/x-protobuf")],
            ExportMetricsServiceResponse {
                partial_success: None,
            }
            .encode_to_vec(),
        )
            .into_response(),
        Err(_) => (StatusCode::SERVICE_UNAVAILABLE, "refused by the test").into_response(),
    }
}

#[tonic::async_trait]
impl MetricsService for Service {
    async fn export(
        &self,
        request: tonic::Request<ExportMetricsServiceRequest>,
    ) -> Result<tonic::Response<ExportMetricsServiceResponse>, tonic::Status> {
        let metadata = request
            .metadata()
            .iter()
            .filter_map(|kv| match kv {
                tonic::metadata::KeyAndValueRef::Ascii(k, v) => {
                    Some((k.as_str().to_owned(), v.to_str().ok()?.to_owned()))
                }
                tonic::metadata::KeyAndValueRef::Binary(..) => None,
            })
            .collect();
        match self.take("grpc", metadata, request.into_inner()) {
            Ok(()) => Ok(tonic::Response::new(ExportMetricsServiceResponse {
                partial_success: None,
            })),
            Err(code) => Err(tonic::Status::new(code, "refused by the test")),
        }
    }
}

/// A running receiver. Its own runtime serves it; dropping or stopping it closes every
/// connection at once, as a collector that goes away would.
pub struct Receiver {
    pub addr: SocketAddr,
    state: Arc<Mutex<State>>,
    runtime: Option<tokio::runtime::Runtime>,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
}

impl Receiver {
    /// On a free loopback port.
    pub fn start() -> Receiver {
        Receiver::start_on("127.0.0.1:0".parse().unwrap())
    }

    /// On `addr`, e.g. the port of a stopped receiver; retried for a few seconds while the
    /// port is still held.
    pub fn start_on(addr: SocketAddr) -> Receiver {
        Receiver::serve(addr, None)
    }

    /// On a free loopback port, over TLS with `pki`'s server certificate, requiring a client
    /// certificate signed by its CA.
    pub fn start_tls(pki: &Pki) -> Receiver {
        let any = "127.0.0.1:0".parse().unwrap();
        Receiver::start_tls_on(any, pki, &pki.server_cert, &pki.server_key)
    }

    /// [`Receiver::start_tls`] on `addr`, presenting the certificate and key in `cert` and
    /// `key` (e.g. [`Pki::expired_server`]'s).
    pub fn start_tls_on(
        addr: SocketAddr,
        pki: &Pki,
        cert: &std::path::Path,
        key: &std::path::Path,
    ) -> Receiver {
        use tonic::transport::{Certificate, Identity, ServerTlsConfig};
        let read = |p: &std::path::Path| std::fs::read(p).unwrap();
        let tls = ServerTlsConfig::new()
            .identity(Identity::from_pem(read(cert), read(key)))
            .client_ca_root(Certificate::from_pem(read(&pki.ca)));
        Receiver::serve(addr, Some(tls))
    }

    fn serve(addr: SocketAddr, tls: Option<tonic::transport::ServerTlsConfig>) -> Receiver {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("receiver runtime");
        let deadline = Instant::now() + Duration::from_secs(10);
        let listener = loop {
            match runtime.block_on(tokio::net::TcpListener::bind(addr)) {
                Ok(l) => break l,
                Err(e) if Instant::now() < deadline => {
                    eprintln!("receiver: bind {addr}: {e}; retrying");
                    std::thread::sleep(Duration::from_millis(100));
                }
                Err(e) => panic!("receiver: bind {addr}: {e}"),
            }
        };
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(Mutex::new(State::default()));
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let service = Service {
            state: state.clone(),
        };
        // gRPC and OTLP/HTTP on one port: the gRPC service's router, plus the HTTP route.
        let router = tonic::service::Routes::new(MetricsServiceServer::new(service.clone()))
            .add_service(LogsServiceServer::new(service.clone()))
            .into_axum_router()
            .route(
                "/v1/metrics",
                axum::routing::post(http_export).with_state(service.clone()),
            )
            .route(
                "/v1/logs",
                axum::routing::post(http_logs).with_state(service),
            );
        let mut server = tonic::transport::Server::builder().accept_http1(true);
        if let Some(tls) = tls {
            server = server.tls_config(tls).expect("receiver TLS config");
        }
        let routes = tonic::service::Routes::from(router);
        runtime.spawn(async move {
            let incoming = tonic::transport::server::TcpIncoming::from(listener);
            let _ = server
                .add_routes(routes)
                .serve_with_incoming_shutdown(incoming, async {
                    let _ = rx.await;
                })
                .await;
        });
        Receiver {
            addr,
            state,
            runtime: Some(runtime),
            shutdown: Some(tx),
        }
    }

    /// `http://ADDR`, what fix-monitor's `--otlp-endpoint` takes (gRPC, or HTTP as a base URL).
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// `https://localhost:PORT`, for a receiver started with [`Receiver::start_tls`].
    pub fn tls_endpoint(&self) -> String {
        format!("https://localhost:{}", self.addr.port())
    }

    /// Stops serving, closes every connection, and returns what was received.
    pub fn stop(mut self) -> Vec<Received> {
        self.halt();
        std::mem::take(&mut self.state.lock().unwrap().received)
    }

    /// Stops serving, closes every connection, and returns the log records received.
    pub fn stop_logs(mut self) -> Vec<Record> {
        self.halt();
        std::mem::take(&mut self.state.lock().unwrap().records)
    }

    fn halt(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(rt) = self.runtime.take() {
            // Drops the connection tasks, and with them the sockets: no graceful drain.
            rt.shutdown_timeout(Duration::from_millis(500));
        }
    }

    /// From now on, answer every export with `code` (`None`: accept again).
    pub fn refuse(&self, code: Option<tonic::Code>) {
        self.state.lock().unwrap().refuse = code;
    }

    /// Everything received so far.
    pub fn received(&self) -> Vec<Received> {
        self.state.lock().unwrap().received.clone()
    }

    pub fn count(&self) -> usize {
        self.state.lock().unwrap().received.len()
    }

    /// Every log record received so far, in order of arrival.
    pub fn records(&self) -> Vec<Record> {
        self.state.lock().unwrap().records.clone()
    }

    /// The log records of event `name`.
    pub fn events(&self, name: &str) -> Vec<Record> {
        self.records()
            .into_iter()
            .filter(|r| r.event_name == name)
            .collect()
    }

    /// Logs exports accepted so far.
    pub fn log_exports(&self) -> usize {
        self.state.lock().unwrap().log_exports
    }

    /// Every point received so far, in order of arrival.
    pub fn points(&self) -> Vec<Point> {
        let state = self.state.lock().unwrap();
        state
            .received
            .iter()
            .flat_map(|r| points(&r.request))
            .collect()
    }

    /// The last point of `metric` whose `target` attribute is `target`.
    pub fn latest(&self, metric: &str, target: &str) -> Option<Point> {
        self.points()
            .into_iter()
            .rev()
            .find(|p| p.metric == metric && p.target() == Some(target))
    }

    /// The last point of `metric` whose attributes include `labels`.
    pub fn latest_with(&self, metric: &str, labels: &[(&str, &str)]) -> Option<Point> {
        self.points().into_iter().rev().find(|p| {
            p.metric == metric
                && labels
                    .iter()
                    .all(|(k, v)| p.attrs.get(*k).map(String::as_str) == Some(*v))
        })
    }

    /// Waits (bounded) until `f` holds; panics with `what` and a summary of what arrived.
    pub fn wait_for(&self, what: &str, timeout: Duration, mut f: impl FnMut(&Receiver) -> bool) {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if f(self) {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!(
            "receiver: timed out after {timeout:?} waiting for {what}; {} exports received, the \
             last one's points:\n{}",
            self.count(),
            self.received()
                .last()
                .map(|r| summary(&points(&r.request)))
                .unwrap_or_default()
        );
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.halt();
    }
}

/// One line per point, for failure messages.
pub fn summary(points: &[Point]) -> String {
    points
        .iter()
        .map(|p| match p.kind {
            Kind::Histogram { .. } => {
                format!("{} {:?} count={} sum={}", p.metric, p.attrs, p.count, p.sum)
            }
            _ => format!("{} {:?} {:?} = {}", p.metric, p.kind, p.attrs, p.value),
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// A throwaway PKI in a temporary directory: a CA, a server certificate for `localhost` and
/// 127.0.0.1, and a client certificate, all as PEM files signed by the CA.
pub struct Pki {
    pub ca: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
    issuer: rcgen::Issuer<'static, rcgen::KeyPair>,
    dir: tempfile::TempDir,
}

/// A leaf certificate for `names` signed by `issuer`, valid for decades (rcgen's default) or,
/// `expired`, over 2020-2021 only: its PEM and its key's.
fn leaf(
    issuer: &rcgen::Issuer<'static, rcgen::KeyPair>,
    names: Vec<String>,
    usage: rcgen::ExtendedKeyUsagePurpose,
    expired: bool,
) -> (String, String) {
    use rcgen::{CertificateParams, DnType, KeyPair, KeyUsagePurpose};
    let mut params = CertificateParams::new(names).unwrap();
    params
        .distinguished_name
        .push(DnType::CommonName, "fix-monitor test");
    params.use_authority_key_identifier_extension = true;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![usage];
    if expired {
        params.not_before = rcgen::date_time_ymd(2020, 1, 1);
        params.not_after = rcgen::date_time_ymd(2021, 12, 31);
    }
    let key = KeyPair::generate().unwrap();
    let cert = params.signed_by(&key, issuer).unwrap();
    (cert.pem(), key.serialize_pem())
}

impl Pki {
    // Making a CA and two certificates is work, not a default value.
    #[allow(clippy::new_without_default)]
    pub fn new() -> Pki {
        use rcgen::{
            BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer,
            KeyPair, KeyUsagePurpose,
        };
        let dir = tempfile::tempdir().unwrap();
        let write = |name: &str, pem: String| {
            let path = dir.path().join(name);
            std::fs::write(&path, pem).unwrap();
            path
        };

        let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca.distinguished_name
            .push(DnType::CommonName, "fix-monitor test CA");
        ca.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let ca_key = KeyPair::generate().unwrap();
        let ca_pem = ca.self_signed(&ca_key).unwrap().pem();
        let issuer = Issuer::new(ca, ca_key);

        let (server_cert, server_key) = leaf(
            &issuer,
            vec!["localhost".into(), "127.0.0.1".into()],
            ExtendedKeyUsagePurpose::ServerAuth,
            false,
        );
        let (client_cert, client_key) = leaf(
            &issuer,
            vec!["client".into()],
            ExtendedKeyUsagePurpose::ClientAuth,
            false,
        );
        Pki {
            ca: write("ca.pem", ca_pem),
            server_cert: write("server.pem", server_cert),
            server_key: write("server.key", server_key),
            client_cert: write("client.pem", client_cert),
            client_key: write("client.key", client_key),
            issuer,
            dir,
        }
    }

    /// A server certificate of this CA for `localhost` and 127.0.0.1 that expired at the end of
    /// 2021: its certificate and key files.
    pub fn expired_server(&self) -> (PathBuf, PathBuf) {
        let (cert, key) = leaf(
            &self.issuer,
            vec!["localhost".into(), "127.0.0.1".into()],
            rcgen::ExtendedKeyUsagePurpose::ServerAuth,
            true,
        );
        let (c, k) = (
            self.dir.path().join("expired.pem"),
            self.dir.path().join("expired.key"),
        );
        std::fs::write(&c, cert).unwrap();
        std::fs::write(&k, key).unwrap();
        (c, k)
    }
}
