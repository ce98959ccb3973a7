use std::path::Path;

use super::*;

/// A throwaway PKI: a CA, a server certificate for localhost signed by it, a client certificate
/// (SANs `client.example` and 10.1.2.3) signed by it, and a second, unrelated CA.
pub(crate) struct TestPki {
    pub ca: String,
    pub server_cert: String,
    pub server_key: String,
    pub client_cert: String,
    pub client_key: String,
}

impl TestPki {
    pub fn new() -> TestPki {
        use rcgen::{
            BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer,
            KeyPair, KeyUsagePurpose,
        };
        let ca = |name: &str| {
            let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
            ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
            ca.distinguished_name.push(DnType::CommonName, name);
            ca.key_usages = vec![
                KeyUsagePurpose::KeyCertSign,
                KeyUsagePurpose::DigitalSignature,
            ];
            let key = KeyPair::generate().unwrap();
            let pem = ca.self_signed(&key).unwrap().pem();
            (pem, Issuer::new(ca, key))
        };
        let (ca_pem, issuer) = ca("web_config test CA");
        let leaf = |names: Vec<String>, usage| {
            let mut params = CertificateParams::new(names).unwrap();
            params.distinguished_name.push(DnType::CommonName, "leaf");
            params.use_authority_key_identifier_extension = true;
            params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
            params.extended_key_usages = vec![usage];
            let key = KeyPair::generate().unwrap();
            let cert = params.signed_by(&key, &issuer).unwrap();
            (cert.pem(), key.serialize_pem())
        };
        let (server_cert, server_key) = leaf(
            vec!["localhost".into(), "127.0.0.1".into()],
            ExtendedKeyUsagePurpose::ServerAuth,
        );
        let (client_cert, client_key) = leaf(
            vec!["client.example".into(), "10.1.2.3".into()],
            ExtendedKeyUsagePurpose::ClientAuth,
        );
        TestPki {
            ca: ca_pem,
            server_cert,
            server_key,
            client_cert,
            client_key,
        }
    }

    /// Writes the PEM files under the names the fixture uses.
    pub fn write(&self, dir: &Path) {
        std::fs::write(dir.join("server.crt"), &self.server_cert).unwrap();
        std::fs::write(dir.join("server.key"), &self.server_key).unwrap();
        std::fs::write(dir.join("client-ca.crt"), &self.ca).unwrap();
    }
}

/// A bcrypt hash of `password` at the lowest cost, for fast tests.
pub(crate) fn hash(password: &str) -> String {
    bcrypt::hash_with_salt(password, 4, *b"0123456789abcdef")
        .unwrap()
        .format_for_version(bcrypt::Version::TwoY)
}

fn parse_in(dir: &Path, text: &str) -> Result<WebConfig, Vec<Problem>> {
    parse(text, dir)
}

fn problems(dir: &Path, text: &str) -> Vec<String> {
    match parse_in(dir, text) {
        Ok(c) => panic!("expected problems, got {c:?}"),
        Err(p) => p.iter().map(|p| p.to_string()).collect(),
    }
}

const FIXTURE: &str = include_str!("../../../tests/fixtures/web/node-exporter-web-config.yml");

#[test]
fn node_exporter_file_is_taken_unchanged() {
    let dir = tempfile::tempdir().unwrap();
    TestPki::new().write(dir.path());
    let path = dir.path().join("web-config.yml");
    std::fs::write(&path, FIXTURE).unwrap();
    let c = load(&path).unwrap();
    let tls = c.tls.as_ref().expect("TLS configured");
    assert_eq!(tls.client_auth, ClientAuth::RequireAndVerifyClientCert);
    assert!(tls.config.ignore_client_order);
    assert_eq!(tls.config.alpn_protocols, vec![b"http/1.1".to_vec()]);
    assert_eq!(c.users.keys().collect::<Vec<_>>(), vec!["prometheus"]);
    assert!(bcrypt::verify("scrape-secret", &c.users["prometheus"]).unwrap());
    let headers: Vec<_> = c
        .headers
        .iter()
        .map(|(n, v)| format!("{n}: {}", v.to_str().unwrap()))
        .collect();
    assert_eq!(
        headers,
        vec![
            "strict-transport-security: max-age=31536000",
            "x-content-type-options: nosniff",
            "x-frame-options: deny",
        ]
    );
    assert_eq!(c.rate_limit, None);
    assert_eq!(
        c.describe(),
        "TLS (client certificates: RequireAndVerifyClientCert), basic auth (1 users)"
    );
    // The hash stays out of the debug form.
    assert!(!format!("{c:?}").contains("$2y$"));
}

#[test]
fn empty_and_comment_only_files_mean_plain_http_without_auth() {
    let dir = tempfile::tempdir().unwrap();
    for text in ["", "\n", "# nothing here\n", "---\n"] {
        let c = parse_in(dir.path(), text).unwrap();
        assert!(c.tls.is_none() && c.users.is_empty() && c.headers.is_empty());
        assert!(c.rate_limit.is_none());
    }
}

#[test]
fn malformed_yaml_and_unknown_keys_are_problems() {
    let dir = tempfile::tempdir().unwrap();
    let p = problems(dir.path(), "tls_server_config: [unclosed\n");
    assert_eq!(p.len(), 1);
    assert!(p[0].starts_with("not a valid web configuration:"), "{p:?}");
    let p = problems(dir.path(), "tls_server_config:\n  cert_fil: x.crt\n");
    assert!(p[0].contains("unknown field `cert_fil`"), "{p:?}");
    let p = problems(dir.path(), "basic_auth: {}\n");
    assert!(p[0].contains("unknown field `basic_auth`"), "{p:?}");
    let p = problems(dir.path(), "just a string\n");
    assert!(p[0].starts_with("not a valid web configuration:"), "{p:?}");
}

#[test]
fn missing_certificate_names_the_key_the_value_and_the_resolved_path() {
    let dir = tempfile::tempdir().unwrap();
    let p = problems(
        dir.path(),
        "tls_server_config:\n  cert_file: nope.crt\n  key_file: /nonexistent/nope.key\n",
    );
    assert_eq!(p.len(), 2, "{p:?}");
    let expected = format!(
        "tls_server_config.cert_file = \"nope.crt\": cannot read {}: No such file or directory (os error 2)",
        dir.path().join("nope.crt").display()
    );
    assert_eq!(p[0], expected);
    assert!(p[1].starts_with(
        "tls_server_config.key_file = \"/nonexistent/nope.key\": cannot read /nonexistent/nope.key"
    ));
}

#[test]
fn tls_without_a_certificate_or_key_is_a_problem() {
    let dir = tempfile::tempdir().unwrap();
    TestPki::new().write(dir.path());
    let p = problems(dir.path(), "tls_server_config:\n  key_file: server.key\n");
    assert_eq!(p.len(), 1);
    assert!(
        p[0].starts_with("tls_server_config.cert_file: is missing"),
        "{p:?}"
    );
    let p = problems(dir.path(), "tls_server_config:\n  cert_file: server.crt\n");
    assert!(
        p[0].starts_with("tls_server_config.key_file: is missing"),
        "{p:?}"
    );
    // Only version keys: TLS is not configured, as in the toolkit.
    let c = parse_in(dir.path(), "tls_server_config:\n  min_version: TLS13\n").unwrap();
    assert!(c.tls.is_none());
}

#[test]
fn files_that_are_not_pem_or_do_not_match_are_problems() {
    let dir = tempfile::tempdir().unwrap();
    let pki = TestPki::new();
    pki.write(dir.path());
    std::fs::write(dir.path().join("junk.crt"), "not a certificate\n").unwrap();
    std::fs::write(dir.path().join("other.key"), TestPki::new().server_key).unwrap();
    let p = problems(
        dir.path(),
        "tls_server_config:\n  cert_file: junk.crt\n  key_file: server.crt\n",
    );
    assert_eq!(p.len(), 2, "{p:?}");
    assert!(
        p[0].contains("cert_file = \"junk.crt\": contains no PEM certificate"),
        "{p:?}"
    );
    assert!(
        p[1].contains("key_file = \"server.crt\": contains no usable PEM private key"),
        "{p:?}"
    );
    let p = problems(
        dir.path(),
        "tls_server_config:\n  cert_file: server.crt\n  key_file: other.key\n",
    );
    assert_eq!(p.len(), 1, "{p:?}");
    assert!(
        p[0].contains("key_file = \"other.key\": does not fit the certificate"),
        "{p:?}"
    );
}

#[test]
fn inline_certificate_and_key_work_like_files() {
    let dir = tempfile::tempdir().unwrap();
    let pki = TestPki::new();
    let indent = |s: &str| s.lines().map(|l| format!("    {l}\n")).collect::<String>();
    let text = format!(
        "tls_server_config:\n  cert: |\n{}  key: |\n{}",
        indent(&pki.server_cert),
        indent(&pki.server_key)
    );
    let c = parse_in(dir.path(), &text).unwrap();
    assert_eq!(c.tls.unwrap().client_auth, ClientAuth::NoClientCert);
}

#[test]
fn hashes_that_are_not_bcrypt_are_problems_and_are_not_printed() {
    let dir = tempfile::tempdir().unwrap();
    let text = format!(
        "basic_auth_users:\n  alice: hunter2\n  bob: 5f4dcc3b5aa765d61d8327deb882cf99\n  carol: '{}'\n  dave: '$2y$03$QOauhQNbBCuQDKes6eFzPeMqBSjb7Mr5DUmpZ/VcEd00UAV/LDeSi'\n",
        hash("fine")
    );
    let p = problems(dir.path(), &text);
    assert_eq!(p.len(), 3, "{p:?}");
    assert!(
        p[0].starts_with("basic_auth_users.alice = <hidden>: is not a bcrypt hash"),
        "{p:?}"
    );
    assert!(
        p[1].starts_with("basic_auth_users.bob = <hidden>: is not a bcrypt hash"),
        "{p:?}"
    );
    assert!(
        p[2].starts_with("basic_auth_users.dave = <hidden>: bcrypt cost 3 is out of range"),
        "{p:?}"
    );
    assert!(!p.iter().any(|p| p.contains("hunter2")));
}

#[test]
fn every_bcrypt_prefix_is_taken() {
    let dir = tempfile::tempdir().unwrap();
    let h = hash("pw");
    for prefix in ["$2a$", "$2b$", "$2y$"] {
        let text = format!("basic_auth_users:\n  u: '{}{}'\n", prefix, &h[4..]);
        let c = parse_in(dir.path(), &text).unwrap();
        assert!(bcrypt::verify("pw", &c.users["u"]).unwrap());
    }
}

#[test]
fn only_the_toolkits_headers_and_values_are_taken() {
    let dir = tempfile::tempdir().unwrap();
    let p = problems(
        dir.path(),
        "http_server_config:\n  headers:\n    X-Frame-Options: allow\n    Server: fix\n    x-frame-options: deny\n",
    );
    assert_eq!(p.len(), 3, "{p:?}");
    assert!(
        p[0].starts_with(
            "http_server_config.headers.Server = \"fix\": this header cannot be configured"
        ),
        "{p:?}"
    );
    assert!(p[1].starts_with("http_server_config.headers.X-Frame-Options = \"allow\": expected one of: deny, sameorigin"), "{p:?}");
    assert!(p[2].contains("headers.x-frame-options"), "{p:?}");
    // Blank means unset.
    let c = parse_in(
        dir.path(),
        "http_server_config:\n  http2: false\n  headers:\n    Content-Security-Policy: ''\n    X-XSS-Protection: '1; mode=block'\n",
    )
    .unwrap();
    assert_eq!(c.headers.len(), 1);
    assert_eq!(c.headers[0].0, "x-xss-protection");
}

#[test]
fn client_auth_types_and_their_ca() {
    let dir = tempfile::tempdir().unwrap();
    TestPki::new().write(dir.path());
    let base = "tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n";
    for (kind, expected) in [
        ("NoClientCert", ClientAuth::NoClientCert),
        ("RequestClientCert", ClientAuth::RequestClientCert),
        ("RequireAnyClientCert", ClientAuth::RequireAnyClientCert),
        ("RequireClientCert", ClientAuth::RequireAnyClientCert),
    ] {
        let c = parse_in(dir.path(), &format!("{base}  client_auth_type: {kind}\n")).unwrap();
        assert_eq!(c.tls.unwrap().client_auth, expected);
    }
    for kind in ["VerifyClientCertIfGiven", "RequireAndVerifyClientCert"] {
        let c = parse_in(
            dir.path(),
            &format!("{base}  client_auth_type: {kind}\n  client_ca_file: client-ca.crt\n"),
        )
        .unwrap();
        assert_eq!(c.tls.unwrap().client_auth.as_str(), kind);
        let p = problems(dir.path(), &format!("{base}  client_auth_type: {kind}\n"));
        assert!(
            p[0].starts_with("tls_server_config.client_ca_file: is missing"),
            "{p:?}"
        );
    }
    let p = problems(
        dir.path(),
        &format!("{base}  client_ca_file: client-ca.crt\n"),
    );
    assert!(
        p[0].contains("client CA is configured without a client auth policy"),
        "{p:?}"
    );
    let p = problems(
        dir.path(),
        &format!("{base}  client_auth_type: VerifyEverything\n"),
    );
    assert!(
        p[0].starts_with(
            "tls_server_config.client_auth_type = \"VerifyEverything\": expected NoClientCert"
        ),
        "{p:?}"
    );
    let p = problems(
        dir.path(),
        &format!(
            "{base}  client_auth_type: RequireAndVerifyClientCert\n  client_ca_file: server.key\n"
        ),
    );
    assert!(
        p[0].contains("client_ca_file = \"server.key\": contains no PEM certificate"),
        "{p:?}"
    );
}

#[test]
fn what_rustls_cannot_do_is_refused_by_name() {
    let dir = tempfile::tempdir().unwrap();
    TestPki::new().write(dir.path());
    let base = "tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n";
    let p = problems(
        dir.path(),
        &format!("{base}  cipher_suites: [TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA, TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256, TLS_BOGUS]\n"),
    );
    assert_eq!(p.len(), 2, "{p:?}");
    assert!(
        p[0].contains("\"TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA\": this suite is not implemented"),
        "{p:?}"
    );
    assert!(
        p[1].contains("\"TLS_BOGUS\": unknown cipher suite"),
        "{p:?}"
    );
    let p = problems(
        dir.path(),
        &format!("{base}  curve_preferences: [CurveP521]\n"),
    );
    assert!(p[0].contains("P-521 is not implemented"), "{p:?}");
    let p = problems(dir.path(), &format!("{base}  max_version: TLS11\n"));
    assert!(p[0].starts_with("tls_server_config.max_version = \"TLS11\": this server's TLS library (rustls) speaks TLS 1.2 and 1.3 only"), "{p:?}");
    let p = problems(
        dir.path(),
        &format!("{base}  min_version: TLS13\n  max_version: TLS12\n"),
    );
    assert!(p[0].contains("is above max_version"), "{p:?}");
    let p = problems(dir.path(), &format!("{base}  min_version: SSL3\n"));
    assert!(p[0].contains("unknown TLS version"), "{p:?}");
    // Only TLS 1.3 names while TLS 1.2 is allowed leaves TLS 1.2 without a suite.
    let p = problems(
        dir.path(),
        &format!("{base}  cipher_suites: [TLS_AES_128_GCM_SHA256]\n"),
    );
    assert!(p[0].contains("leaves no TLS 1.2 suite"), "{p:?}");
    // A floor of TLS 1.0 is served as TLS 1.2; TLS 1.3 only works.
    parse_in(dir.path(), &format!("{base}  min_version: TLS10\n")).unwrap();
    parse_in(
        dir.path(),
        &format!("{base}  min_version: TLS13\n  cipher_suites: [TLS_AES_128_GCM_SHA256]\n  curve_preferences: [X25519, CurveP384]\n"),
    )
    .unwrap();
}

#[test]
fn allowed_sans_need_client_certificates() {
    let dir = tempfile::tempdir().unwrap();
    TestPki::new().write(dir.path());
    let base = "tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n";
    let p = problems(
        dir.path(),
        &format!("{base}  client_allowed_sans: [client.example]\n"),
    );
    assert!(p[0].contains("client_allowed_sans"), "{p:?}");
    parse_in(
        dir.path(),
        &format!("{base}  client_auth_type: RequireAndVerifyClientCert\n  client_ca_file: client-ca.crt\n  client_allowed_sans: [client.example]\n"),
    )
    .unwrap();
}

#[test]
fn subject_alt_names_are_read_as_text() {
    let pki = TestPki::new();
    let der = CertificateDer::from_pem_slice(pki.client_cert.as_bytes()).unwrap();
    assert_eq!(
        subject_alt_names(&der).unwrap(),
        vec!["client.example", "10.1.2.3"]
    );
}

#[test]
fn rate_limit_takes_go_durations() {
    let dir = tempfile::tempdir().unwrap();
    let r = |t: &str| parse_in(dir.path(), t).map(|c| c.rate_limit);
    assert_eq!(
        r("rate_limit:\n  interval: 1m30s\n  burst: 3\n").unwrap(),
        Some(RateLimit {
            interval: Duration::from_secs(90),
            burst: 3
        })
    );
    assert_eq!(
        r("rate_limit:\n  interval: 0s\n  burst: 0\n").unwrap(),
        None
    );
    assert_eq!(r("rate_limit:\n  burst: 10\n").unwrap(), None);
    assert!(r("rate_limit:\n  interval: 1s\n").is_err());
    assert!(r("rate_limit:\n  interval: soon\n  burst: 1\n").is_err());
    assert_eq!(parse_go_duration("1.5s"), Some(Duration::from_millis(1500)));
    assert_eq!(parse_go_duration("300us"), Some(Duration::from_micros(300)));
    assert_eq!(parse_go_duration("1h2m3s"), Some(Duration::from_secs(3723)));
    assert_eq!(parse_go_duration("5"), None);
    assert_eq!(parse_go_duration("-1s"), None);
}

#[test]
fn every_problem_is_reported_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let p = problems(
        dir.path(),
        "tls_server_config:\n  cert_file: a.crt\n  key_file: a.key\n  min_version: TLS9\nbasic_auth_users:\n  u: plain\nhttp_server_config:\n  headers:\n    Server: x\nrate_limit:\n  interval: 1s\n  burst: -1\n",
    );
    assert_eq!(p.len(), 6, "{p:?}");
}

#[test]
fn brackets_nested_past_any_web_configuration_are_refused_at_once() {
    let dir = tempfile::tempdir().unwrap();
    // 300 KB of `{` after a key: the YAML parser alone took five minutes over it.
    for text in [
        format!("basic_auth_users: {}", "{".repeat(300_000)),
        format!("{{{}", "[".repeat(300_000)),
    ] {
        let started = std::time::Instant::now();
        let p = problems(dir.path(), &text);
        assert!(started.elapsed() < std::time::Duration::from_secs(1));
        assert_eq!(p.len(), 1, "{p:?}");
        assert!(p[0].contains("nested more than 32 deep"), "{p:?}");
    }
    // What a real file nests passes; a quote before the brackets does not hide them (a `"`
    // inside a plain scalar opens nothing; a fuzzer's input hid its brackets that way).
    assert!(nests_too_deep(&format!("a: x\"y: {}", "{".repeat(40))));
    assert!(!nests_too_deep("a: {b: [1, {c: [2]}]}"));
}
