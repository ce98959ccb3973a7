//! How the endpoint meets the network: the accept loop, TLS, basic auth, the extra headers, the
//! rate limit, and the limits that keep a hostile or broken client from holding the sidecar.
//!
//! The routes themselves (`http::router`) only read published state; everything here is about
//! connections. Every connection is a task with its own deadlines; the accept loop owns a cap
//! on how many there are:
//!
//! - **TLS handshake and request head**: within [`Limits::header_read_timeout`] of the
//!   connection's start (or of the previous response, on a kept-alive connection), else closed.
//!   This bounds slow-loris clients and idle keep-alive connections alike.
//! - **Answer**: a handler that has not answered within [`Limits::request_timeout`] gets a 503.
//! - **Progress**: a connection on which no byte moves either way for [`Limits::idle_timeout`]
//!   (a client that stops reading its response) is closed.
//! - **Size**: a request head over [`Limits::max_header_bytes`] or [`Limits::max_headers`]
//!   fields gets a 431; a request body over [`Limits::max_body_bytes`] (or of unknown length) a
//!   413. The endpoint takes only GET requests.
//! - **Connections**: at most [`Limits::max_connections`] at once. At the cap, an arriving
//!   connection makes room by closing the oldest connection that has no request in flight (one
//!   still in its TLS handshake, sending its request head, or idle between requests): an
//!   attacker's idle or dribbling connections cannot lock out a scraper, and a request being
//!   answered is never cut. If every connection has a request in flight, new ones wait in the
//!   kernel's accept queue until one finishes. Open files are thus bounded by the cap plus one.
//!
//! The poll loop runs on its own thread and the exporters on theirs, so nothing here can slow
//! them: at worst the endpoint itself is busy.

use std::collections::{BTreeMap, HashMap};
use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::Router;
use http::{header, HeaderValue, Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

use super::web_config::{RateLimit, WebConfig};

/// The endpoint's limits. [`Limits::default`] is what the sidecar runs with (examples/README.md,
/// "Limits"); tests shorten the timeouts.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Most connections open at once (see the module comment for what happens at the cap).
    pub max_connections: usize,
    /// TLS handshake plus request head, from the connection's start or the previous response.
    pub header_read_timeout: Duration,
    /// From a complete request head to the handler's answer.
    pub request_timeout: Duration,
    /// Longest time with no byte moving either way.
    pub idle_timeout: Duration,
    /// Request line plus header fields.
    pub max_header_bytes: usize,
    pub max_headers: usize,
    pub max_body_bytes: u64,
    /// At shutdown, how long open connections get to finish their request before they are cut.
    pub drain: Duration,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            max_connections: 256,
            header_read_timeout: Duration::from_secs(10),
            request_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(30),
            max_header_bytes: 8 * 1024,
            max_headers: 32,
            max_body_bytes: 1024,
            drain: Duration::from_secs(2),
        }
    }
}

/// Connections the endpoint failed to accept (out of file descriptors, or the like), over every
/// server of the process: `fix_monitor_endpoint_accept_errors_total`.
static ACCEPT_ERRORS: AtomicU64 = AtomicU64::new(0);

/// Registers `fix_monitor_endpoint_accept_errors` on `meter` (observed at collection).
pub fn register(meter: &opentelemetry::metrics::Meter) {
    meter
        .u64_observable_counter(crate::instruments::names::ENDPOINT_ACCEPT_ERRORS)
        .with_description(
            "Connections the HTTP endpoint failed to accept (out of file descriptors, or the \
             like); it backs off 50 ms and goes on, connections already open are unaffected",
        )
        .with_callback(|obs| obs.observe(ACCEPT_ERRORS.load(Ordering::Relaxed), &[]))
        .build();
}

/// hyper's read buffer: a request head must fit in it, so it is the head limit's size (hyper's
/// minimum is 8 KiB plus room for pipelined bytes).
const READ_BUFFER: usize = 16 * 1024;

/// Serves `router` on `listener` with `web`'s TLS, auth, headers and rate limit, within
/// `limits`, until `shutdown` resolves; then stops accepting, lets open connections finish for
/// at most `limits.drain`, and returns.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    web: Arc<WebConfig>,
    limits: Limits,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> io::Result<()> {
    let (_keep, web) = tokio::sync::watch::channel(web);
    serve_reloadable(listener, router, web, limits, shutdown).await
}

/// [`serve`] with a web configuration that a reload may replace: a connection accepted after
/// the change gets the new one (certificates, users, headers, rate limit); connections open
/// already keep the one they started with.
pub async fn serve_reloadable(
    listener: TcpListener,
    router: Router,
    mut web: tokio::sync::watch::Receiver<Arc<WebConfig>>,
    limits: Limits,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> io::Result<()> {
    let acceptor =
        |w: &WebConfig| (w.tls.as_ref()).map(|t| tokio_rustls::TlsAcceptor::from(t.config.clone()));
    let current = web.borrow_and_update().clone();
    let mut tls = acceptor(&current);
    let mut guard = Arc::new(Guard::new(router.clone(), &current, &limits));
    let permits = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    let registry = Arc::new(Registry::default());
    let closing = CancellationToken::new();
    let mut tasks = tokio::task::JoinSet::new();
    let mut accept_errors = 0u64;
    tokio::pin!(shutdown);

    loop {
        let (stream, _peer) = tokio::select! {
            _ = &mut shutdown => break,
            Some(_) = tasks.join_next(), if !tasks.is_empty() => continue,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors, or the like: say so (not once per attempt), back
                    // off a little, and go on; connections already open are unaffected.
                    accept_errors += 1;
                    ACCEPT_ERRORS.fetch_add(1, Ordering::Relaxed);
                    if accept_errors == 1 || accept_errors % 1000 == 0 {
                        tracing::warn!(error = %e, errors = accept_errors, "endpoint: accepting a connection failed");
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let permit = match permits.clone().try_acquire_owned() {
            Ok(p) => p,
            Err(_) => {
                registry.evict_oldest_idle();
                tokio::select! {
                    _ = &mut shutdown => break,
                    p = permits.clone().acquire_owned() => p.expect("the semaphore is never closed"),
                }
            }
        };
        let _ = stream.set_nodelay(true);
        if web.has_changed().unwrap_or(false) {
            let w = web.borrow_and_update().clone();
            tls = acceptor(&w);
            guard = Arc::new(Guard::new(router.clone(), &w, &limits));
        }
        let (id, slot) = registry.add();
        let conn = Connection {
            id,
            slot,
            registry: registry.clone(),
            guard: guard.clone(),
            limits: limits.clone(),
            closing: closing.clone(),
        };
        let tls = tls.clone();
        tasks.spawn(async move {
            conn.run(stream, tls).await;
            drop(permit);
        });
    }

    // Stop accepting (the listener closes when this returns), ask every connection to finish
    // (idle ones close at once), and cut what is left at the deadline.
    closing.cancel();
    let drained = tokio::time::timeout(limits.drain, async {
        while tasks.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        tracing::info!(
            connections = tasks.len(),
            "endpoint: closing connections that did not finish within the drain deadline"
        );
        tasks.shutdown().await;
    }
    Ok(())
}

/// The open connections, oldest first, and whether each has a request in flight.
#[derive(Default)]
struct Registry {
    next: AtomicU64,
    slots: Mutex<BTreeMap<u64, Arc<Slot>>>,
}

#[derive(Default)]
struct Slot {
    /// Requests being answered on this connection now.
    in_flight: AtomicUsize,
    evict: CancellationToken,
}

impl Registry {
    fn add(&self) -> (u64, Arc<Slot>) {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let slot = Arc::new(Slot::default());
        self.lock().insert(id, slot.clone());
        (id, slot)
    }

    fn remove(&self, id: u64) {
        self.lock().remove(&id);
    }

    /// Closes the oldest connection with no request in flight; false if every one has one.
    fn evict_oldest_idle(&self) -> bool {
        let mut slots = self.lock();
        let victim = slots
            .iter()
            .find(|(_, s)| s.in_flight.load(Ordering::Acquire) == 0 && !s.evict.is_cancelled())
            .map(|(id, _)| *id);
        match victim.and_then(|id| slots.remove(&id)) {
            Some(slot) => {
                slot.evict.cancel();
                true
            }
            None => false,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<u64, Arc<Slot>>> {
        self.slots.lock().unwrap_or_else(|e| e.into_inner())
    }
}

struct Connection {
    id: u64,
    slot: Arc<Slot>,
    registry: Arc<Registry>,
    guard: Arc<Guard>,
    limits: Limits,
    closing: CancellationToken,
}

impl Connection {
    async fn run(self, stream: TcpStream, tls: Option<tokio_rustls::TlsAcceptor>) {
        let started = Instant::now();
        let progress = Arc::new(Progress::new(started));
        let io = Watched {
            inner: stream,
            progress: progress.clone(),
        };
        match tls {
            None => self.http(io, progress).await,
            Some(acceptor) => {
                let handshake =
                    tokio::time::timeout(self.limits.header_read_timeout, acceptor.accept(io));
                let tls_stream = tokio::select! {
                    r = handshake => match r {
                        Ok(Ok(s)) => s,
                        Ok(Err(e)) => {
                            tracing::debug!(error = %e, "endpoint: TLS handshake failed");
                            return self.done();
                        }
                        Err(_) => return self.done(),
                    },
                    _ = self.slot.evict.cancelled() => return self.done(),
                    _ = self.closing.cancelled() => return self.done(),
                };
                self.http(tls_stream, progress).await
            }
        }
    }

    async fn http<I>(self, io: I, progress: Arc<Progress>)
    where
        I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let slot = self.slot.clone();
        let guard = self.guard.clone();
        let service = hyper::service::service_fn(move |req: Request<Incoming>| {
            let guard = guard.clone();
            let in_flight = InFlight::new(slot.clone());
            async move {
                let response = guard.handle(req).await;
                drop(in_flight);
                Ok::<_, Infallible>(response)
            }
        });
        let mut builder = hyper::server::conn::http1::Builder::new();
        builder
            .timer(TokioTimer::new())
            .header_read_timeout(self.limits.header_read_timeout)
            .max_buf_size(READ_BUFFER.max(self.limits.max_header_bytes + 1024))
            .max_header_size(self.limits.max_header_bytes)
            .max_headers(self.limits.max_headers)
            .keep_alive(true);
        let conn = builder.serve_connection(TokioIo::new(io), service);
        tokio::pin!(conn);
        let idle = progress.stalled(self.limits.idle_timeout);
        tokio::pin!(idle);
        let mut draining = false;
        loop {
            tokio::select! {
                r = conn.as_mut() => {
                    if let Err(e) = r {
                        tracing::debug!(error = %e, "endpoint: connection ended with an error");
                    }
                    break;
                }
                _ = self.slot.evict.cancelled() => break,
                _ = &mut idle => break,
                _ = self.closing.cancelled(), if !draining => {
                    draining = true;
                    conn.as_mut().graceful_shutdown();
                }
            }
        }
        self.done()
    }

    fn done(self) {
        self.registry.remove(self.id);
    }
}

/// Marks a request in flight on its connection for as long as it lives.
struct InFlight(Arc<Slot>);

impl InFlight {
    fn new(slot: Arc<Slot>) -> InFlight {
        slot.in_flight.fetch_add(1, Ordering::AcqRel);
        InFlight(slot)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

/// When a connection last moved a byte, in milliseconds since it started.
struct Progress {
    started: Instant,
    last_ms: AtomicU64,
}

impl Progress {
    fn new(started: Instant) -> Progress {
        Progress {
            started,
            last_ms: AtomicU64::new(0),
        }
    }

    fn touch(&self) {
        let ms = self.started.elapsed().as_millis() as u64;
        self.last_ms.store(ms, Ordering::Relaxed);
    }

    /// Resolves once nothing has moved for `limit`.
    async fn stalled(&self, limit: Duration) {
        loop {
            let last = self.started + Duration::from_millis(self.last_ms.load(Ordering::Relaxed));
            let deadline = last + limit;
            if Instant::now() >= deadline {
                return;
            }
            tokio::time::sleep_until(deadline.into()).await;
        }
    }
}

/// A socket that records its progress.
struct Watched {
    inner: TcpStream,
    progress: Arc<Progress>,
}

impl AsyncRead for Watched {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(r, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.progress.touch();
        }
        r
    }
}

impl AsyncWrite for Watched {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write(cx, buf);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            self.progress.touch();
        }
        r
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// What every request passes before it reaches a route: the rate limit, the size limit, basic
/// auth, the answer's deadline; and the extra headers on every response.
struct Guard {
    router: Router,
    auth: Option<BasicAuth>,
    headers: Vec<(http::HeaderName, HeaderValue)>,
    rate: Option<Mutex<TokenBucket>>,
    max_body_bytes: u64,
    request_timeout: Duration,
}

impl Guard {
    fn new(router: Router, web: &WebConfig, limits: &Limits) -> Guard {
        Guard {
            router,
            auth: (!web.users.is_empty()).then(|| BasicAuth::new(web.users.clone())),
            headers: web.headers.clone(),
            rate: web.rate_limit.map(|r| Mutex::new(TokenBucket::new(r))),
            max_body_bytes: limits.max_body_bytes,
            request_timeout: limits.request_timeout,
        }
    }

    async fn handle(&self, req: Request<Incoming>) -> Response<Body> {
        let mut response = self.check_and_route(req).await;
        for (name, value) in &self.headers {
            response.headers_mut().insert(name.clone(), value.clone());
        }
        response
    }

    async fn check_and_route(&self, req: Request<Incoming>) -> Response<Body> {
        if let Some(rate) = &self.rate {
            if !rate.lock().unwrap_or_else(|e| e.into_inner()).take() {
                return plain(StatusCode::TOO_MANY_REQUESTS, "too many requests\n");
            }
        }
        let declared = req
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        let chunked = req.headers().contains_key(header::TRANSFER_ENCODING);
        if chunked || declared.is_some_and(|n| n > self.max_body_bytes) {
            let mut r = plain(
                StatusCode::PAYLOAD_TOO_LARGE,
                "request bodies are not accepted here\n",
            );
            r.headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
            return r;
        }
        if let Some(auth) = &self.auth {
            if !auth.check(req.headers().get(header::AUTHORIZATION)).await {
                let mut r = plain(StatusCode::UNAUTHORIZED, "Unauthorized\n");
                r.headers_mut()
                    .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Basic"));
                return r;
            }
        }
        let routed = self.router.clone().oneshot(req.map(Body::new));
        match tokio::time::timeout(self.request_timeout, routed).await {
            Ok(Ok(r)) => r,
            Ok(Err(never)) => match never {},
            Err(_) => plain(
                StatusCode::SERVICE_UNAVAILABLE,
                "the answer took too long\n",
            ),
        }
    }
}

fn plain(status: StatusCode, text: &'static str) -> Response<Body> {
    let mut r = Response::new(Body::from(text));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

/// The toolkit's `rate_limit`: a token bucket of `burst` tokens, one more every `interval`.
struct TokenBucket {
    limit: RateLimit,
    tokens: f64,
    at: Instant,
}

impl TokenBucket {
    fn new(limit: RateLimit) -> TokenBucket {
        TokenBucket {
            limit,
            tokens: f64::from(limit.burst),
            at: Instant::now(),
        }
    }

    fn take(&mut self) -> bool {
        let now = Instant::now();
        let earned = now.duration_since(self.at).as_secs_f64() / self.limit.interval.as_secs_f64();
        self.tokens = (self.tokens + earned).min(f64::from(self.limit.burst));
        self.at = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// Basic auth against bcrypt hashes. bcrypt is slow on purpose (tens of milliseconds), so, as
/// the toolkit does, one check runs at a time, off the async workers, and each outcome is
/// remembered (keyed by a SHA-256 of user, password and hash, never the password itself) in a
/// bounded cache: a scraper pays once, and a flood of wrong passwords costs at most one core.
struct BasicAuth {
    users: BTreeMap<String, String>,
    /// Checked for unknown users, so that their answer takes as long as a known user's: a
    /// bcrypt hash at the first user's cost.
    decoy: String,
    cache: Mutex<HashMap<[u8; 32], bool>>,
    one_at_a_time: tokio::sync::Mutex<()>,
}

/// Most remembered outcomes; the cache is emptied when full.
const AUTH_CACHE: usize = 1024;

impl BasicAuth {
    fn new(users: BTreeMap<String, String>) -> BasicAuth {
        let cost = users
            .values()
            .find_map(|h| h.parse::<bcrypt::HashParts>().ok())
            .map_or(10, |p| p.get_cost());
        let decoy = bcrypt::hash_with_salt("fix-monitor: no such user", cost, [7; 16])
            .map(|h| h.format_for_version(bcrypt::Version::TwoY))
            .unwrap_or_default();
        BasicAuth {
            users,
            decoy,
            cache: Mutex::new(HashMap::new()),
            one_at_a_time: tokio::sync::Mutex::new(()),
        }
    }

    async fn check(&self, header: Option<&HeaderValue>) -> bool {
        let Some((user, password)) = header.and_then(parse_basic) else {
            return false;
        };
        let (known, hash) = match self.users.get(&user) {
            Some(h) => (true, h.clone()),
            None => (false, self.decoy.clone()),
        };
        let key = {
            let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
            for part in [user.as_bytes(), password.as_bytes(), hash.as_bytes()] {
                ctx.update(&(part.len() as u64).to_le_bytes());
                ctx.update(part);
            }
            let mut key = [0u8; 32];
            key.copy_from_slice(ctx.finish().as_ref());
            key
        };
        if let Some(ok) = self.cached(&key) {
            return ok && known;
        }
        let _one = self.one_at_a_time.lock().await;
        if let Some(ok) = self.cached(&key) {
            return ok && known;
        }
        let ok =
            tokio::task::spawn_blocking(move || bcrypt::verify(password, &hash).unwrap_or(false))
                .await
                .unwrap_or(false);
        let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        if cache.len() >= AUTH_CACHE {
            cache.clear();
        }
        cache.insert(key, ok);
        ok && known
    }

    fn cached(&self, key: &[u8; 32]) -> Option<bool> {
        self.cache
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(key)
            .copied()
    }
}

/// `Authorization: Basic base64(user:password)` -> (user, password).
fn parse_basic(value: &HeaderValue) -> Option<(String, String)> {
    use base64::Engine;
    let text = value.to_str().ok()?;
    let (scheme, rest) = text.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(rest.trim())
        .ok()?;
    let decoded = String::from_utf8(decoded).ok()?;
    let (user, password) = decoded.split_once(':')?;
    Some((user.to_string(), password.to_string()))
}

#[cfg(test)]
mod tests;
