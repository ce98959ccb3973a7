//! OTLP/HTTP (protobuf) push to an in-process receiver: what the requests carry, and TLS.
//! (The push into a real VictoriaMetrics is in the system tier: tests/system/otlp_http_vm.rs.)

use crate::harness::*;
use crate::otlp_receiver::{Pki, Receiver};

const WAIT: std::time::Duration = std::time::Duration::from_secs(20);

fn scraped(m: &Metrics, metric: &str, target: &str) -> Option<f64> {
    m.get(metric, &[("target", target)])
}

/// What goes over the wire: `/v1/metrics` appended to the base URL, a protobuf body, the
/// configured headers, with the file's value over the standard variable's (the exporter itself
/// would let the variable win), and the same numbers as the scrape.
#[test]
fn http_requests_carry_protobuf_and_headers_with_fix_monitors_layers_winning() {
    let rx = Receiver::start();
    let d = Downstream::listen("127.0.0.63:0");
    let cfg = config_file(&format!(
        "[[targets]]\nname = \"venue\"\naddress = \"127.0.0.63\"\n\
         [otlp]\nendpoint = \"{}/\"\nprotocol = \"http/protobuf\"\ninterval = \"200ms\"\n\
         headers = {{ \"X-Tenant\" = \"file\" }}\n",
        rx.endpoint()
    ));
    let mut cmd = command();
    cmd.env(
        "OTEL_EXPORTER_OTLP_HEADERS",
        "x-tenant=env,x-extra=env%20value",
    );
    let sc = Sidecar::start_with(
        cmd,
        &[
            "--config",
            cfg.path().to_str().unwrap(),
            "--interval",
            "100ms",
        ],
    );
    let _held: Vec<_> = (0..2)
        .map(|_| connect_from("127.0.0.1:0", d.addr))
        .collect();
    rx.wait_for("two connections over HTTP", WAIT, |r| {
        r.latest("fix_connections_active", "venue").map(|p| p.value) == Some(2.0)
            && r.latest("fix_connections", "venue").map(|p| p.value) == Some(2.0)
    });
    let last = rx.received().pop().unwrap();
    assert_eq!(last.transport, "http");
    let h = |name: &str| last.metadata.get(name).map(String::as_str);
    assert_eq!(h("x-tenant"), Some("file"));
    assert_eq!(h("x-extra"), Some("env value"));
    assert_eq!(h("content-type"), Some("application/x-protobuf"));
    assert!(
        h("user-agent").is_some_and(|ua| ua.starts_with("OTel-OTLP-Exporter-Rust")),
        "{:?}",
        last.metadata
    );
    let m = sc.metrics();
    assert_eq!(
        scraped(&m, "fix_connections_total", "venue"),
        rx.latest("fix_connections", "venue").map(|p| p.value)
    );
    drop(d);
}

/// OTLP/HTTP over TLS with a client certificate (the CA from `ca_file`, the identity from
/// `cert_file` and `key_file`).
#[test]
fn http_over_tls_with_a_client_certificate() {
    let pki = Pki::new();
    let rx = Receiver::start_tls(&pki);
    let d = Downstream::listen("127.0.0.64:0");
    let _c = connect_from("127.0.0.1:0", d.addr);
    let cfg = config_file(&format!(
        "[[targets]]\nname = \"venue\"\naddress = \"127.0.0.64\"\n\
         [otlp]\nendpoint = \"{}\"\nprotocol = \"http/protobuf\"\ninterval = \"200ms\"\n\
         [otlp.tls]\nca_file = \"{}\"\ncert_file = \"{}\"\nkey_file = \"{}\"\n",
        rx.tls_endpoint(),
        pki.ca.display(),
        pki.client_cert.display(),
        pki.client_key.display()
    ));
    let sc = Sidecar::start(&["--config", cfg.path().to_str().unwrap()]);
    rx.wait_for("an export over TLS", WAIT, |r| {
        r.latest("fix_connections_active", "venue").map(|p| p.value) == Some(1.0)
    });
    assert_eq!(rx.received().pop().unwrap().transport, "http");
    let (status, log) = sc.terminate();
    assert!(status.success(), "{log}");
    assert!(!log.contains("OTLP export failed"), "{log}");
    drop(d);
}
