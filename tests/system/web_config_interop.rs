//! The same web configuration file, unchanged, in front of the real node_exporter (Debian's
//! prometheus-node-exporter, built on the Prometheus exporter toolkit) and of fix-monitor: the
//! same client with the same CA, client certificate and password gets in to both, and the same
//! client without the password is refused by both. Also `promtool check web-config` (the
//! toolkit's own validation) accepts the file.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::harness::*;

const FIXTURE: &str = include_str!("../fixtures/web/node-exporter-web-config.yml");

/// A CA, a server certificate for localhost and a client certificate, as PEM text.
struct Pki {
    ca: String,
    server: (String, String),
    client: (String, String),
}

fn pki() -> Pki {
    use rcgen::{
        BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer,
        KeyPair, KeyUsagePurpose,
    };
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name.push(DnType::CommonName, "interop CA");
    ca.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let ca_key = KeyPair::generate().unwrap();
    let ca_pem = ca.self_signed(&ca_key).unwrap().pem();
    let issuer = Issuer::new(ca, ca_key);
    let leaf = |names: Vec<String>, usage| {
        let mut p = CertificateParams::new(names).unwrap();
        p.distinguished_name.push(DnType::CommonName, "interop");
        p.use_authority_key_identifier_extension = true;
        p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        p.extended_key_usages = vec![usage];
        let key = KeyPair::generate().unwrap();
        (
            p.signed_by(&key, &issuer).unwrap().pem(),
            key.serialize_pem(),
        )
    };
    Pki {
        ca: ca_pem,
        server: leaf(
            vec!["localhost".into()],
            ExtendedKeyUsagePurpose::ServerAuth,
        ),
        client: leaf(vec!["scraper".into()], ExtendedKeyUsagePurpose::ClientAuth),
    }
}

#[test]
fn node_exporter_and_fix_monitor_take_the_same_web_config_file() {
    let pki = pki();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("web-config.yml");
    std::fs::write(&file, FIXTURE).unwrap();
    std::fs::write(dir.path().join("server.crt"), &pki.server.0).unwrap();
    std::fs::write(dir.path().join("server.key"), &pki.server.1).unwrap();
    std::fs::write(dir.path().join("client-ca.crt"), &pki.ca).unwrap();

    let out = Command::new(promtool())
        .args(["check", "web-config"])
        .arg(&file)
        .output()
        .expect("promtool (scripts/fetch-tools.sh installs it)");
    assert!(
        out.status.success(),
        "promtool check web-config: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );

    // node_exporter, with only one cheap collector, on a port it picks.
    let mut ne = Command::new("prometheus-node-exporter")
        .arg(format!("--web.config.file={}", file.display()))
        .args([
            "--web.listen-address=127.0.0.1:0",
            "--collector.disable-defaults",
            "--collector.loadavg",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("prometheus-node-exporter (scripts/fetch-tools.sh installs it)");
    let (tx, rx) = std::sync::mpsc::channel();
    let stderr = ne.stderr.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if line.contains("Listening on") {
                if let Some(a) = line.split("address=").nth(1) {
                    let _ = tx.send(a.split_whitespace().next().unwrap_or("").to_string());
                }
            }
        }
    });
    let ne_addr: std::net::SocketAddr = rx
        .recv_timeout(Duration::from_secs(20))
        .expect("node_exporter did not say where it listens")
        .parse()
        .unwrap();

    let fm = Sidecar::start(&[
        "--ip",
        "127.0.0.9",
        "--web.config.file",
        file.to_str().unwrap(),
    ]);

    let client = reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(10))
        .tls_built_in_root_certs(false)
        .add_root_certificate(reqwest::Certificate::from_pem(pki.ca.as_bytes()).unwrap())
        .identity(
            reqwest::Identity::from_pem(format!("{}{}", pki.client.0, pki.client.1).as_bytes())
                .unwrap(),
        )
        .build()
        .unwrap();
    for (who, port) in [
        ("node_exporter", ne_addr.port()),
        ("fix-monitor", fm.addr.port()),
    ] {
        let url = format!("https://localhost:{port}/metrics");
        let r = client
            .get(&url)
            .basic_auth("prometheus", Some("scrape-secret"))
            .send()
            .unwrap();
        assert_eq!(r.status(), 200, "{who}");
        assert_eq!(r.headers()["x-frame-options"], "deny", "{who}");
        assert_eq!(
            r.headers()["strict-transport-security"],
            "max-age=31536000",
            "{who}"
        );
        let r = client.get(&url).send().unwrap();
        assert_eq!(r.status(), 401, "{who}");
        let r = client
            .get(&url)
            .basic_auth("prometheus", Some("wrong"))
            .send()
            .unwrap();
        assert_eq!(r.status(), 401, "{who}");
    }
    let _ = ne.kill();
    let _ = ne.wait();
}
