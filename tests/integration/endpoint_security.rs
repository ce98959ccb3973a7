//! The endpoint exposed the node_exporter way, through the real binary: a web configuration
//! file in the exporter toolkit's format (TLS with a CA the test made, client certificates,
//! bcrypt basic auth, extra headers), its errors at start, `expose_connections = false`, and a
//! shutdown that no stalled peer or silent collector can hold up.

use std::net::TcpListener;
use std::process::Command;
use std::time::{Duration, Instant};

use crate::harness::*;
use crate::otlp_receiver::Pki;

const FIXTURE: &str = include_str!("../fixtures/web/node-exporter-web-config.yml");

/// The fixture file, unchanged, beside the certificates it names.
fn node_exporter_dir(pki: &Pki) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(&pki.server_cert, dir.path().join("server.crt")).unwrap();
    std::fs::copy(&pki.server_key, dir.path().join("server.key")).unwrap();
    std::fs::copy(&pki.ca, dir.path().join("client-ca.crt")).unwrap();
    std::fs::write(dir.path().join("web-config.yml"), FIXTURE).unwrap();
    dir
}

fn client(pki: &Pki, with_identity: bool) -> reqwest::blocking::Client {
    let mut b = reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(10))
        .tls_built_in_root_certs(false)
        .add_root_certificate(
            reqwest::Certificate::from_pem(&std::fs::read(&pki.ca).unwrap()).unwrap(),
        );
    if with_identity {
        let mut pem = std::fs::read(&pki.client_cert).unwrap();
        pem.extend(std::fs::read(&pki.client_key).unwrap());
        b = b.identity(reqwest::Identity::from_pem(&pem).unwrap());
    }
    b.build().unwrap()
}

#[test]
fn a_node_exporter_web_config_file_is_used_unchanged() {
    let pki = Pki::new();
    let dir = node_exporter_dir(&pki);
    let d = Downstream::listen("127.0.0.9:0");
    let _held = [connect_from("127.0.0.1:0", d.addr)];
    let sc = Sidecar::start(&[
        "--ip",
        "127.0.0.9",
        "--interval",
        "100ms",
        "--web.config.file",
        dir.path().join("web-config.yml").to_str().unwrap(),
    ]);
    // The harness hands over the address before it stores the line: wait for the line.
    sc.wait_for("the start-up line", Duration::from_secs(10), |s| {
        s.log()
            .contains("TLS (client certificates: RequireAndVerifyClientCert), basic auth (1 users)")
    });
    let url = |p: &str| format!("https://localhost:{}{p}", sc.addr.port());
    let good = client(&pki, true);

    let r = good
        .get(url("/metrics"))
        .basic_auth("prometheus", Some("scrape-secret"))
        .send()
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-frame-options"], "deny");
    assert_eq!(r.headers()["x-content-type-options"], "nosniff");
    assert_eq!(r.headers()["strict-transport-security"], "max-age=31536000");
    let m = Metrics::parse(&r.text().unwrap());
    assert!(
        m.get("fix_monitor_poll_errors_total", &[]).is_some(),
        "{m:?}"
    );

    // Each lock on its own: no password, a wrong one, no client certificate, no TLS.
    let r = good.get(url("/health")).send().unwrap();
    assert_eq!(r.status(), 401);
    assert_eq!(r.headers()["www-authenticate"], "Basic");
    assert_eq!(r.headers()["x-frame-options"], "deny");
    let r = good
        .get(url("/health"))
        .basic_auth("prometheus", Some("guess"))
        .send()
        .unwrap();
    assert_eq!(r.status(), 401);
    assert!(client(&pki, false)
        .get(url("/health"))
        .basic_auth("prometheus", Some("scrape-secret"))
        .send()
        .is_err());
    assert!(reqwest::blocking::get(format!("http://127.0.0.1:{}/health", sc.addr.port())).is_err());
    // And the right password again: 200 with the JSON health.
    let r = good
        .get(url("/health"))
        .basic_auth("prometheus", Some("scrape-secret"))
        .send()
        .unwrap();
    assert_eq!(r.status(), 200);
    let health: serde_json::Value = r.json().unwrap();
    assert_eq!(health["status"], "healthy", "{health:#}");

    let (status, log) = sc.terminate();
    assert!(status.success(), "{log}");
}

#[test]
fn basic_auth_over_plain_http() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("web.yml");
    // Cost 4, so that the test is quick; the fixture above has a real cost-10 hash.
    let hash = bcrypt::hash_with_salt("pw", 4, *b"fix-monitor-salt")
        .unwrap()
        .format_for_version(bcrypt::Version::TwoY);
    std::fs::write(&path, format!("basic_auth_users:\n  alice: '{hash}'\n")).unwrap();
    let sc = Sidecar::start(&[
        "--ip",
        "127.0.0.9",
        "--web.config.file",
        path.to_str().unwrap(),
    ]);
    let c = reqwest::blocking::Client::new();
    let url = format!("http://{}/health", sc.addr);
    assert_eq!(c.get(&url).send().unwrap().status(), 401);
    assert_eq!(
        c.get(&url)
            .basic_auth("alice", Some("nope"))
            .send()
            .unwrap()
            .status(),
        401
    );
    assert_eq!(
        c.get(&url)
            .basic_auth("bob", Some("pw"))
            .send()
            .unwrap()
            .status(),
        401
    );
    assert_eq!(
        c.get(&url)
            .basic_auth("alice", Some("pw"))
            .send()
            .unwrap()
            .status(),
        200
    );
}

fn run(args: &[&str], env: &[(&str, &str)]) -> std::process::Output {
    let mut c = command();
    c.arg("run")
        .args(["--ip", "127.0.0.9", "--listen", "127.0.0.1:0"])
        .args(args);
    for (k, v) in env {
        c.env(k, v);
    }
    c.output().expect("running fix-monitor")
}

#[test]
fn a_bad_web_config_file_is_a_configuration_error_naming_key_value_and_source() {
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, text: &str| {
        let p = dir.path().join(name);
        std::fs::write(&p, text).unwrap();
        p.to_str().unwrap().to_string()
    };
    let malformed = write("malformed.yml", "tls_server_config: [\n");
    let o = run(&["--web.config.file", &malformed], &[]);
    assert_usage_error(
        &o,
        &[
            &format!("prometheus.web_config = \"{malformed}\" (from flag --web.config.file)"),
            "not a valid web configuration",
        ],
    );

    let missing_cert = write(
        "nocert.yml",
        "tls_server_config:\n  cert_file: gone.crt\n  key_file: gone.key\n",
    );
    let o = run(
        &[],
        &[("FIX_MONITOR_PROMETHEUS__WEB_CONFIG", &missing_cert)],
    );
    assert_usage_error(&o, &[
        &format!("prometheus.web_config = \"{missing_cert}\" (from env FIX_MONITOR_PROMETHEUS__WEB_CONFIG)"),
        "tls_server_config.cert_file = \"gone.crt\": cannot read",
        "tls_server_config.key_file = \"gone.key\": cannot read",
    ]);

    let plain = write("plain.yml", "basic_auth_users:\n  alice: hunter2\n");
    let cfg = config_file(&format!("[prometheus]\nweb_config = \"{plain}\"\n"));
    let o = run(&["--config", cfg.path().to_str().unwrap()], &[]);
    assert_usage_error(
        &o,
        &[
            "prometheus.web_config",
            "(from file",
            "basic_auth_users.alice = <hidden>: is not a bcrypt hash",
        ],
    );
    assert!(!String::from_utf8_lossy(&o.stderr).contains("hunter2"));

    let o = run(&["--web.config.file", "/nonexistent/web.yml"], &[]);
    assert_usage_error(
        &o,
        &[
            "prometheus.web_config = \"/nonexistent/web.yml\"",
            "cannot read the file",
        ],
    );
}

#[test]
fn expose_connections_false_hides_every_session() {
    let d = Downstream::listen("127.0.0.9:0");
    let held = connect_from("127.0.0.1:0", d.addr);
    let local_port = held.local_addr().unwrap().port().to_string();
    let cfg = config_file("[prometheus]\nexpose_connections = false\n");
    let sc = Sidecar::start(&[
        "--config",
        cfg.path().to_str().unwrap(),
        "--ip",
        "127.0.0.9",
        "--interval",
        "100ms",
    ]);
    sc.wait_for("the connection", Duration::from_secs(10), |s| {
        s.metrics().get("fix_connections_active", &[]) == Some(1.0)
    });
    let (code, body) = sc.get("/connections");
    assert_eq!(code, 404, "{body}");
    let (code, page) = sc.get("/");
    assert_eq!(code, 200);
    assert!(!page.contains(&local_port), "{page}");
    assert!(!page.contains("/connections"), "{page}");
    // Counts are still there.
    let health = sc.json("/health");
    assert_eq!(health["active_connections"], 1, "{health:#}");
    assert!(health["targets"][0].get("address").is_none(), "{health:#}");
    assert_eq!(health["targets"][0]["name"], "127.0.0.9", "{health:#}");
}

/// A collector that accepts connections and never says a word.
fn silent_collector() -> (TcpListener, std::thread::JoinHandle<()>) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let accept = l.try_clone().unwrap();
    let t = std::thread::spawn(move || {
        let mut held = Vec::new();
        while let Ok((s, _)) = accept.accept() {
            held.push(s);
            if held.len() > 64 {
                break;
            }
        }
    });
    (l, t)
}

fn signal(pid: u32, sig: i32) {
    // SAFETY: kill(2) on our own child's pid.
    unsafe { libc::kill(pid as i32, sig) };
}

/// Waits for the exit, returning how long it took from `since`.
fn exit_within(
    child: &mut std::process::Child,
    since: Instant,
    bound: Duration,
) -> (Duration, std::process::ExitStatus) {
    loop {
        if let Some(st) = child.try_wait().unwrap() {
            return (since.elapsed(), st);
        }
        assert!(
            since.elapsed() < bound,
            "still running {:?} after the signal",
            since.elapsed()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn spawn(args: &[&str]) -> std::process::Child {
    let mut c: Command = command();
    c.arg("run")
        .args(args)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped());
    c.spawn().unwrap()
}

/// Waits until the sidecar answers on `addr` (the test picked the port).
fn wait_listening(addr: std::net::SocketAddr) {
    let end = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(addr).is_err() {
        assert!(Instant::now() < end, "no listener on {addr}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn a_silent_collector_and_stalled_peers_do_not_hold_up_the_exit() {
    let (collector, _t) = silent_collector();
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], free_port()));
    let mut child = spawn(&[
        "--ip",
        "127.0.0.9",
        "--listen",
        &addr.to_string(),
        "--otlp-endpoint",
        &format!("http://{}", collector.local_addr().unwrap()),
    ]);
    wait_listening(addr);
    // Peers that stall: one dribbling a request head, one that never reads a response.
    let mut dribble = std::net::TcpStream::connect(addr).unwrap();
    std::io::Write::write_all(&mut dribble, b"GET /metrics HTTP/1.1\r\nHo").unwrap();
    let _idle = std::net::TcpStream::connect(addr).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let began = Instant::now();
    signal(child.id(), libc::SIGTERM);
    // The documented bound with the default OTLP timeout (5 s): 2 s for the poll thread, then
    // the final export's grace of 6 s while the endpoint drains; plus a second of slack.
    let (took, status) = exit_within(&mut child, began, Duration::from_secs(12));
    let log = read_all(child.stderr.take().unwrap());
    assert!(took < Duration::from_secs(9), "{took:?}\n{log}");
    assert!(status.success(), "{status:?}\n{log}");
    assert!(
        log.contains("did not finish within the grace period"),
        "{log}"
    );
}

#[test]
fn a_second_signal_exits_at_once() {
    let (collector, _t) = silent_collector();
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], free_port()));
    let mut child = spawn(&[
        "--ip",
        "127.0.0.9",
        "--listen",
        &addr.to_string(),
        "--otlp-endpoint",
        &format!("http://{}", collector.local_addr().unwrap()),
    ]);
    wait_listening(addr);
    signal(child.id(), libc::SIGTERM);
    // The final export now waits on the silent collector; a second signal cuts it short.
    std::thread::sleep(Duration::from_millis(1500));
    let began = Instant::now();
    signal(child.id(), libc::SIGINT);
    let (took, status) = exit_within(&mut child, began, Duration::from_secs(5));
    let log = read_all(child.stderr.take().unwrap());
    assert!(took < Duration::from_secs(1), "{took:?}\n{log}");
    assert_eq!(status.code(), Some(130), "{log}");
    assert!(log.contains("second signal"), "{log}");
}
