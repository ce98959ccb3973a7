//! The endpoint's connection handling against real loopback clients: plain TCP for the
//! misbehaving ones, reqwest (rustls) for the well-behaved ones.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use axum::routing::get;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::*;
use crate::export::web_config::tests::{hash, TestPki};
use crate::export::web_config::{self, WebConfig};

fn router() -> Router {
    Router::new()
        .route("/health", get(|| async { "ok" }))
        .route(
            "/slow",
            get(|| async {
                tokio::time::sleep(Duration::from_millis(1500)).await;
                "slow"
            }),
        )
        .route("/hang", get(std::future::pending::<&'static str>))
}

fn short() -> Limits {
    Limits {
        max_connections: 8,
        header_read_timeout: Duration::from_millis(500),
        request_timeout: Duration::from_secs(5),
        idle_timeout: Duration::from_secs(5),
        drain: Duration::from_millis(500),
        ..Limits::default()
    }
}

struct Running {
    addr: SocketAddr,
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<io::Result<()>>,
}

async fn start(web: WebConfig, limits: Limits) -> Running {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, rx) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(serve(
        listener,
        router(),
        Arc::new(web),
        limits,
        async move {
            let _ = rx.await;
        },
    ));
    Running { addr, stop, task }
}

fn web(dir: &std::path::Path, text: &str) -> WebConfig {
    web_config::parse(text, dir).unwrap()
}

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap()
}

/// Reads until the server closes the connection (or `within` passes: then panics).
async fn closed_within(s: &mut TcpStream, within: Duration) {
    let mut buf = [0u8; 4096];
    let end = Instant::now() + within;
    loop {
        match tokio::time::timeout_at(end.into(), s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return,
            Ok(Ok(_)) => continue,
            Err(_) => panic!("the server did not close the connection within {within:?}"),
        }
    }
}

#[tokio::test]
async fn basic_auth_no_wrong_and_right_credentials() {
    let dir = tempfile::tempdir().unwrap();
    let text = format!(
        "basic_auth_users:\n  prometheus: '{}'\nhttp_server_config:\n  headers:\n    X-Frame-Options: deny\n",
        hash("secret")
    );
    let s = start(web(dir.path(), &text), short()).await;
    let url = format!("http://{}/health", s.addr);
    let c = client();

    let r = c.get(&url).send().await.unwrap();
    assert_eq!(r.status(), 401);
    assert_eq!(r.headers()["www-authenticate"], "Basic");
    assert_eq!(r.headers()["x-frame-options"], "deny");
    let r = c
        .get(&url)
        .basic_auth("prometheus", Some("wrong"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let r = c
        .get(&url)
        .basic_auth("nobody", Some("secret"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let r = c
        .get(&url)
        .header("authorization", "Bearer abc")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    for _ in 0..2 {
        // The second is answered from the cache; same answer.
        let r = c
            .get(&url)
            .basic_auth("prometheus", Some("secret"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(r.headers()["x-frame-options"], "deny");
        assert_eq!(r.text().await.unwrap(), "ok");
    }
    let r = c
        .get(&url)
        .basic_auth("prometheus", Some("wrong"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    s.stop.send(()).unwrap();
    s.task.await.unwrap().unwrap();
}

fn tls_text(extra: &str) -> String {
    format!("tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n{extra}")
}

fn trusting(pki: &TestPki) -> reqwest::ClientBuilder {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .tls_built_in_root_certs(false)
        .add_root_certificate(reqwest::Certificate::from_pem(pki.ca.as_bytes()).unwrap())
}

fn identity(pki: &TestPki) -> reqwest::Identity {
    reqwest::Identity::from_pem(format!("{}{}", pki.client_cert, pki.client_key).as_bytes())
        .unwrap()
}

#[tokio::test]
async fn tls_with_a_ca_the_test_made() {
    let dir = tempfile::tempdir().unwrap();
    let pki = TestPki::new();
    pki.write(dir.path());
    let s = start(web(dir.path(), &tls_text("")), short()).await;
    let port = s.addr.port();

    let r = trusting(&pki)
        .build()
        .unwrap()
        .get(format!("https://localhost:{port}/health"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.text().await.unwrap(), "ok");
    // A client that does not trust the CA, and one speaking plain HTTP, get nothing.
    let other = TestPki::new();
    assert!(trusting(&other)
        .build()
        .unwrap()
        .get(format!("https://localhost:{port}/health"))
        .send()
        .await
        .is_err());
    assert!(client()
        .get(format!("http://127.0.0.1:{port}/health"))
        .send()
        .await
        .is_err());
    s.stop.send(()).unwrap();
    s.task.await.unwrap().unwrap();
}

#[tokio::test]
async fn client_certificates_required_and_verified() {
    let dir = tempfile::tempdir().unwrap();
    let pki = TestPki::new();
    pki.write(dir.path());
    let text = tls_text(
        "  client_auth_type: RequireAndVerifyClientCert\n  client_ca_file: client-ca.crt\n",
    );
    let s = start(web(dir.path(), &text), short()).await;
    let url = format!("https://localhost:{}/health", s.addr.port());

    let r = trusting(&pki)
        .identity(identity(&pki))
        .build()
        .unwrap()
        .get(&url)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    // No certificate, or one from another CA: the handshake fails.
    assert!(trusting(&pki)
        .build()
        .unwrap()
        .get(&url)
        .send()
        .await
        .is_err());
    let stranger = TestPki::new();
    assert!(trusting(&pki)
        .identity(identity(&stranger))
        .build()
        .unwrap()
        .get(&url)
        .send()
        .await
        .is_err());
    s.stop.send(()).unwrap();
    s.task.await.unwrap().unwrap();
}

#[tokio::test]
async fn client_certificate_modes_that_do_not_verify_and_allowed_sans() {
    let dir = tempfile::tempdir().unwrap();
    let pki = TestPki::new();
    pki.write(dir.path());
    let stranger = TestPki::new();

    // RequireAnyClientCert: any certificate, from any CA; none is refused.
    let s = start(
        web(
            dir.path(),
            &tls_text("  client_auth_type: RequireAnyClientCert\n"),
        ),
        short(),
    )
    .await;
    let url = format!("https://localhost:{}/health", s.addr.port());
    let r = trusting(&pki)
        .identity(identity(&stranger))
        .build()
        .unwrap()
        .get(&url)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(trusting(&pki)
        .build()
        .unwrap()
        .get(&url)
        .send()
        .await
        .is_err());
    s.stop.send(()).unwrap();

    // VerifyClientCertIfGiven: none is fine, a stranger's is not.
    let s = start(
        web(
            dir.path(),
            &tls_text(
                "  client_auth_type: VerifyClientCertIfGiven\n  client_ca_file: client-ca.crt\n",
            ),
        ),
        short(),
    )
    .await;
    let url = format!("https://localhost:{}/health", s.addr.port());
    assert_eq!(
        trusting(&pki)
            .build()
            .unwrap()
            .get(&url)
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    assert!(trusting(&pki)
        .identity(identity(&stranger))
        .build()
        .unwrap()
        .get(&url)
        .send()
        .await
        .is_err());
    s.stop.send(()).unwrap();

    // client_allowed_sans: the right CA is not enough without the right name.
    for (allowed, ok) in [
        ("client.example", true),
        ("10.1.2.3", true),
        ("someone.else", false),
    ] {
        let s = start(
            web(dir.path(), &tls_text(&format!("  client_auth_type: RequireAndVerifyClientCert\n  client_ca_file: client-ca.crt\n  client_allowed_sans: [{allowed}]\n"))),
            short(),
        ).await;
        let url = format!("https://localhost:{}/health", s.addr.port());
        let r = trusting(&pki)
            .identity(identity(&pki))
            .build()
            .unwrap()
            .get(&url)
            .send()
            .await;
        assert_eq!(r.is_ok(), ok, "{allowed}: {r:?}");
        s.stop.send(()).unwrap();
    }
}

#[tokio::test]
async fn a_request_head_that_dribbles_is_cut_at_the_header_timeout() {
    let s = start(WebConfig::default(), short()).await;
    let mut slow = TcpStream::connect(s.addr).await.unwrap();
    slow.write_all(b"GET /health HTTP/1.1\r\nHo").await.unwrap();
    let began = Instant::now();
    closed_within(&mut slow, Duration::from_secs(5)).await;
    assert!(
        began.elapsed() >= Duration::from_millis(300),
        "{:?}",
        began.elapsed()
    );
    // An idle connection that never sends a byte goes the same way.
    let mut idle = TcpStream::connect(s.addr).await.unwrap();
    closed_within(&mut idle, Duration::from_secs(5)).await;
}

#[tokio::test]
async fn at_the_cap_idle_connections_make_room_for_a_scraper() {
    let limits = Limits {
        max_connections: 4,
        header_read_timeout: Duration::from_secs(60),
        ..short()
    };
    let s = start(WebConfig::default(), limits).await;
    let mut idle = Vec::new();
    for _ in 0..4 {
        idle.push(TcpStream::connect(s.addr).await.unwrap());
    }
    // Dribbling ones too: a partial head is not a request in flight.
    idle[3].write_all(b"GET /he").await.unwrap();
    let began = Instant::now();
    let r = client()
        .get(format!("http://{}/health", s.addr))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(began.elapsed() < Duration::from_secs(5));
    // The oldest idle connection was the one closed.
    closed_within(&mut idle[0], Duration::from_secs(5)).await;
}

#[tokio::test]
async fn at_the_cap_a_request_in_flight_is_never_cut() {
    let limits = Limits {
        max_connections: 1,
        ..short()
    };
    let s = start(WebConfig::default(), limits).await;
    let url = |p: &str| format!("http://{}{p}", s.addr);
    let slow = tokio::spawn(client().get(url("/slow")).send());
    // Let the slow request get in first.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let began = Instant::now();
    let quick = client().get(url("/health")).send().await.unwrap();
    assert_eq!(quick.status(), 200);
    let slow = slow.await.unwrap().unwrap();
    assert_eq!(slow.status(), 200);
    assert_eq!(slow.text().await.unwrap(), "slow");
    // The second waited for the first rather than cutting it.
    assert!(
        began.elapsed() >= Duration::from_millis(900),
        "{:?}",
        began.elapsed()
    );
}

#[tokio::test]
async fn oversized_requests_are_refused() {
    let s = start(WebConfig::default(), short()).await;
    let c = client();
    let r = c
        .post(format!("http://{}/health", s.addr))
        .body(vec![b'x'; 5000])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 413);
    let r = c
        .get(format!("http://{}/health", s.addr))
        .header("x-big", "y".repeat(20_000))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 431);
    let mut raw = TcpStream::connect(s.addr).await.unwrap();
    let mut many = String::from("GET /health HTTP/1.1\r\nHost: x\r\n");
    for i in 0..40 {
        many.push_str(&format!("x-{i}: 1\r\n"));
    }
    many.push_str("\r\n");
    raw.write_all(many.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), raw.read_to_end(&mut answer)).await;
    assert!(
        String::from_utf8_lossy(&answer).starts_with("HTTP/1.1 431"),
        "{}",
        String::from_utf8_lossy(&answer)
    );
}

#[tokio::test]
async fn a_slow_answer_gets_a_503_at_the_request_timeout() {
    let limits = Limits {
        request_timeout: Duration::from_millis(300),
        ..short()
    };
    let s = start(WebConfig::default(), limits).await;
    let r = client()
        .get(format!("http://{}/hang", s.addr))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 503);
}

#[tokio::test]
async fn a_client_that_stops_reading_is_cut_at_the_idle_timeout() {
    let limits = Limits {
        idle_timeout: Duration::from_millis(500),
        ..short()
    };
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    // A route with a body far larger than the socket buffers.
    let big = Router::new().route("/big", get(|| async { "x".repeat(64 << 20) }));
    let (_stop, rx) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(serve(
        listener,
        big,
        Arc::new(WebConfig::default()),
        limits,
        async move {
            let _ = rx.await;
        },
    ));
    let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    sock.set_recv_buffer_size(4096).unwrap();
    sock.connect(&addr.into()).unwrap();
    sock.set_nonblocking(true).unwrap();
    let mut s = TcpStream::from_std(sock.into()).unwrap();
    s.write_all(b"GET /big HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    // Read a little, then stop: the server's writes stall.
    let mut buf = [0u8; 1024];
    let _ = s.read(&mut buf).await.unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;
    // Now drain what is buffered: the stream must end well short of the 64 MiB.
    let mut total = 0usize;
    let end = Instant::now() + Duration::from_secs(10);
    loop {
        match tokio::time::timeout_at(end.into(), s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break,
            Ok(Ok(n)) => total += n,
            Err(_) => panic!("still open after {total} bytes"),
        }
    }
    assert!(total < 32 << 20, "{total}");
}

#[tokio::test]
async fn the_rate_limit_answers_429_past_the_burst() {
    let dir = tempfile::tempdir().unwrap();
    let s = start(
        web(dir.path(), "rate_limit:\n  interval: 1h\n  burst: 2\n"),
        short(),
    )
    .await;
    let c = client();
    let url = format!("http://{}/health", s.addr);
    assert_eq!(c.get(&url).send().await.unwrap().status(), 200);
    assert_eq!(c.get(&url).send().await.unwrap().status(), 200);
    assert_eq!(c.get(&url).send().await.unwrap().status(), 429);
}

#[tokio::test]
async fn shutdown_is_bounded_by_the_drain_deadline() {
    let limits = Limits {
        header_read_timeout: Duration::from_secs(60),
        request_timeout: Duration::from_secs(60),
        idle_timeout: Duration::from_secs(60),
        drain: Duration::from_millis(500),
        ..short()
    };
    let s = start(WebConfig::default(), limits).await;
    let mut dribble = TcpStream::connect(s.addr).await.unwrap();
    dribble
        .write_all(b"GET /health HTTP/1.1\r\nHo")
        .await
        .unwrap();
    let _idle = TcpStream::connect(s.addr).await.unwrap();
    let hang = tokio::spawn(client().get(format!("http://{}/hang", s.addr)).send());
    tokio::time::sleep(Duration::from_millis(300)).await;
    let began = Instant::now();
    s.stop.send(()).unwrap();
    tokio::time::timeout(Duration::from_secs(3), s.task)
        .await
        .expect("serve returned")
        .unwrap()
        .unwrap();
    assert!(
        began.elapsed() < Duration::from_secs(2),
        "{:?}",
        began.elapsed()
    );
    assert!(hang.await.unwrap().is_err());
    closed_within(&mut dribble, Duration::from_secs(2)).await;
}

#[test]
fn basic_credentials_are_parsed_as_rfc_7617_says() {
    use base64::Engine;
    let enc = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
    let v = |s: String| HeaderValue::from_str(&s).unwrap();
    assert_eq!(
        parse_basic(&v(format!("Basic {}", enc("u:p:with:colons")))),
        Some(("u".into(), "p:with:colons".into()))
    );
    assert_eq!(
        parse_basic(&v(format!("basic {}", enc("u:")))),
        Some(("u".into(), "".into()))
    );
    assert_eq!(parse_basic(&v(format!("Basic {}", enc("nocolon")))), None);
    assert_eq!(parse_basic(&v("Basic !!!".into())), None);
    assert_eq!(parse_basic(&v(format!("Digest {}", enc("u:p")))), None);
}
