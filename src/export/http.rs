//! The HTTP endpoint: `/metrics` (Prometheus text format), `/health` (JSON; 503 when polling
//! has failed for longer than a few intervals), `/connections` (JSON: each active connection),
//! and `/` (a small page linking them). Handlers only read: none of them polls. How it meets
//! the network (TLS, auth, limits) is `server`'s business.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::Serialize;

use super::server::Limits;
use super::web_config::WebConfig;
use crate::fix::monitor::FixReader;
use crate::session::{FixLinkJson, SessionJson};
use crate::state::{StateReader, Status};
use crate::tracker::Timestamp;

#[derive(Clone)]
struct AppState {
    state: StateReader,
    /// `prometheus.expose_connections`: with false, no session and no venue address is shown
    /// anywhere (no `/connections`, no addresses on the page or in `/health`).
    expose_connections: bool,
    registry: Option<prometheus::Registry>,
    /// The last `/metrics` body and the state generation it was encoded at. Connection numbers
    /// only change when a new state is published, so scrapes between two publications share one
    /// encoding: a scrape storm costs a copy per scrape, not a collection. (The process and
    /// export-error series are therefore up to one poll interval old.) The loop updates the
    /// instruments before it publishes, so a body is never older than its generation.
    encoded: Arc<Mutex<Option<(u64, bytes::Bytes)>>>,
    /// The FIX layer's state: `/connections` names each session's FIX session.
    fix: FixReader,
}

pub fn router(
    state: StateReader,
    registry: Option<prometheus::Registry>,
    expose_connections: bool,
    fix: FixReader,
) -> Router {
    let router = Router::new()
        .route("/", get(index))
        .route("/metrics", get(metrics))
        .route("/health", get(health));
    let router = if expose_connections {
        router.route("/connections", get(connections))
    } else {
        router.route("/connections", get(connections_off))
    };
    router.with_state(AppState {
        state,
        expose_connections,
        registry,
        encoded: Arc::default(),
        fix,
    })
}

/// Serves `router` on an already bound listener, with the web configuration's TLS, auth and
/// headers and the endpoint's limits, until `shutdown` resolves (then drains, bounded).
pub async fn serve(
    listener: tokio::net::TcpListener,
    router: Router,
    web: Arc<WebConfig>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    super::server::serve(listener, router, web, Limits::default(), shutdown).await
}

/// [`serve`] with a web configuration a reload may replace (see
/// [`super::server::serve_reloadable`]).
pub async fn serve_reloadable(
    listener: tokio::net::TcpListener,
    router: Router,
    web: tokio::sync::watch::Receiver<Arc<WebConfig>>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    super::server::serve_reloadable(listener, router, web, Limits::default(), shutdown).await
}

/// `POST /-/reload` (and `PUT`, as Prometheus): re-reads the configuration as SIGHUP does and
/// answers with the outcome: 200 and what changed, or 500 and why it was refused (the running
/// configuration stays). Only routed where `prometheus.reload_endpoint` turns it on.
pub fn reload_route(requests: tokio::sync::mpsc::Sender<crate::reload::Request>) -> Router {
    Router::new()
        .route("/-/reload", axum::routing::post(reload).put(reload))
        .with_state(requests)
}

async fn reload(
    State(requests): State<tokio::sync::mpsc::Sender<crate::reload::Request>>,
) -> Response {
    let (tx, rx) = tokio::sync::oneshot::channel();
    if requests.send(tx).await.is_err() {
        return (StatusCode::SERVICE_UNAVAILABLE, "shutting down\n").into_response();
    }
    match tokio::time::timeout(std::time::Duration::from_secs(30), rx).await {
        Ok(Ok(Ok(what))) => (StatusCode::OK, format!("{what}\n")).into_response(),
        Ok(Ok(Err(why))) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("failed to reload the configuration: {why}\n"),
        )
            .into_response(),
        Ok(Err(_)) => (StatusCode::SERVICE_UNAVAILABLE, "shutting down\n").into_response(),
        Err(_) => (
            StatusCode::SERVICE_UNAVAILABLE,
            "the reload did not finish within 30 s\n",
        )
            .into_response(),
    }
}

async fn metrics(State(s): State<AppState>) -> Response {
    let Some(registry) = s.registry else {
        return (
            StatusCode::NOT_FOUND,
            "the Prometheus endpoint is disabled (prometheus.enabled = false)\n",
        )
            .into_response();
    };
    let generation = s.state.get().generation;
    // Held while encoding, so that scrapers arriving together wait for one encoding.
    let mut cache = s.encoded.lock().unwrap_or_else(|e| e.into_inner());
    let body = match cache.as_ref() {
        Some((at, body)) if *at == generation => body.clone(),
        last => match super::prometheus::encode(&registry, last.map_or(0, |(_, b)| b.len())) {
            Ok(text) => {
                let body = bytes::Bytes::from(text);
                *cache = Some((generation, body.clone()));
                body
            }
            Err(e) => {
                tracing::warn!(error = %e, "encoding /metrics failed");
                return (
                    StatusCode::INTERNAL_SERVER_ERROR,
                    format!("encoding failed: {e}\n"),
                )
                    .into_response();
            }
        },
    };
    drop(cache);
    (
        [(header::CONTENT_TYPE, super::prometheus::CONTENT_TYPE)],
        body,
    )
        .into_response()
}

async fn health(State(s): State<AppState>) -> Response {
    let view = s.state.get().health_view(Timestamp::now());
    let code = match view.status {
        Status::Healthy => StatusCode::OK,
        Status::Unhealthy => StatusCode::SERVICE_UNAVAILABLE,
    };
    if s.expose_connections {
        return (code, Json(view)).into_response();
    }
    // Names and counts only: the venues' addresses and ports stay in the config.
    let mut json = serde_json::to_value(&view).unwrap_or_default();
    if let Some(targets) = json.get_mut("targets").and_then(|t| t.as_array_mut()) {
        for t in targets.iter_mut().filter_map(|t| t.as_object_mut()) {
            for hidden in ["address", "port", "local_ports"] {
                t.remove(hidden);
            }
        }
    }
    (code, Json(json)).into_response()
}

async fn connections_off() -> Response {
    (
        StatusCode::NOT_FOUND,
        "/connections is turned off here (prometheus.expose_connections = false)\n",
    )
        .into_response()
}

#[derive(Serialize)]
struct ConnectionsView {
    hostname: String,
    timestamp: String,
    targets: Vec<String>,
    total: usize,
    connections: Vec<SessionJson>,
    /// The most recently closed sessions (oldest first, at most `state::RECENT_CLOSED`), each
    /// with why it ended once judged (`end_cause`, `end_evidence`).
    closed: Vec<SessionJson>,
}

async fn connections(State(s): State<AppState>) -> Json<ConnectionsView> {
    let now = Timestamp::now();
    let m = s.state.get();
    let mut connections = m.connections(now);
    name_fix_sessions(&mut connections, &s.fix);
    Json(ConnectionsView {
        hostname: m.meta.host.clone(),
        timestamp: crate::session::rfc3339(now.wall),
        targets: m.meta.targets.iter().map(|t| t.name.clone()).collect(),
        total: connections.len(),
        connections,
        closed: m.closed_json(now),
    })
}

/// Names on each TCP session the FIX session last seen on it: read on it, or on a tunnel's
/// plaintext leg joined to it (`/sessions` then gives that session's `tcp` as this one).
fn name_fix_sessions(connections: &mut [SessionJson], fix: &FixReader) {
    let state = fix.get();
    if state.sessions.is_empty() {
        return;
    }
    let plain = |a: SocketAddr| SocketAddr::new(a.ip().to_canonical(), a.port());
    let mut by_link = std::collections::HashMap::new();
    for f in &state.sessions {
        if let Some(l) = f.tcp {
            let tunnel = f.tunnel.as_ref().map(|t| t.address);
            by_link
                .entry((plain(l.local), plain(l.remote)))
                .or_insert(FixLinkJson {
                    session: f.session.clone(),
                    tunnel,
                });
        }
    }
    for c in connections {
        let (Ok(local), Ok(remote)) = (c.local_addr.parse(), c.remote_addr.parse()) else {
            continue;
        };
        c.fix = by_link.get(&(plain(local), plain(remote))).cloned();
    }
}

async fn index(State(s): State<AppState>) -> Html<String> {
    let now = Timestamp::now();
    let m = s.state.get();
    let mut rows = String::new();
    // Without expose_connections, the venues' addresses are left out.
    let cell = |text: &str| {
        if s.expose_connections {
            format!("<td>{}</td>", escape(text))
        } else {
            String::new()
        }
    };
    for t in m.targets() {
        rows.push_str(&format!(
            "<tr><td>{}</td>{}<td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>\n",
            escape(&t.name),
            cell(&t.address),
            t.stats.active,
            t.stats.opened,
            t.stats.closed,
            t.stats.peak
        ));
    }
    let (address_header, connections_link) = if s.expose_connections {
        (
            "<th>address</th>",
            "<li><a href=\"/connections\">/connections</a></li>",
        )
    } else {
        ("", "")
    };
    Html(format!(
        "<!doctype html>\n<html><head><meta charset=\"utf-8\"><title>fix-monitor on {host}</title></head>\n<body>\n<h1>fix-monitor</h1>\n<p>Host: {host}<br>Source: {source}<br>Status: {status}<br>Active connections: {active}</p>\n<table border=\"1\"><tr><th>target</th>{address_header}<th>active</th><th>opened</th><th>closed</th><th>peak</th></tr>\n{rows}</table>\n<ul><li><a href=\"/metrics\">/metrics</a></li><li><a href=\"/health\">/health</a></li>{connections_link}</ul>\n</body></html>\n",
        host = escape(&m.meta.host),
        source = m.meta.source.as_str(),
        status = m.status(now).as_str(),
        active = m.active_count(),
    ))
}

/// Escapes text for HTML element content and quoted attribute values.
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// Binds the endpoint's address, with an error that says which address failed and why; where
/// the reason is a missing capability, it names the capability.
pub async fn bind(addr: SocketAddr) -> Result<tokio::net::TcpListener, std::io::Error> {
    tokio::net::TcpListener::bind(addr).await.map_err(|e| {
        // `inet_bind` refuses a port below net.ipv4.ip_unprivileged_port_start (1024 unless
        // lowered) with EACCES to a process without this capability, before anything else.
        let hint = if e.kind() == std::io::ErrorKind::PermissionDenied && addr.port() < 1024 {
            "; ports below 1024 need the CAP_NET_BIND_SERVICE capability \
             (or a lower net.ipv4.ip_unprivileged_port_start): grant it, or listen on a higher port"
        } else {
            ""
        };
        std::io::Error::new(e.kind(), format!("cannot listen on {addr}: {e}{hint}"))
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn escape_neutralises_markup() {
        assert_eq!(
            super::escape(r#"<a href="x">&'"#),
            "&lt;a href=&quot;x&quot;&gt;&amp;&#39;"
        );
    }
}
