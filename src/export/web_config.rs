//! The endpoint's web configuration file, in the format of the Prometheus exporter toolkit
//! (node_exporter's `--web.config.file`): `tls_server_config`, `http_server_config.headers`,
//! `basic_auth_users` (bcrypt hashes) and `rate_limit`. A fleet that already has such a file for
//! node_exporter points `prometheus.web_config` (or `--web.config.file`) at it unchanged.
//!
//! The file is read, and every certificate and key in it parsed, once at start: everything that
//! is wrong is reported at once, each problem with its key in the file, so that the config layer
//! can report it like any other bad value (exit 64). The toolkit re-reads the file on every
//! request; here a change takes a restart.
//!
//! What rustls cannot do is refused by name rather than silently ignored: TLS 1.0 and 1.1 as a
//! maximum, CBC and RSA-key-exchange cipher suites, the P-521 curve. A minimum of TLS 1.0 or 1.1
//! is accepted and served as TLS 1.2 (the floor rustls has anyway): a stricter server, never a
//! looser one. `http_server_config.http2` is accepted and has no effect: the endpoint speaks
//! HTTP/1.1 (what Prometheus scrapes with).

use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use http::{HeaderName, HeaderValue};
use rustls::crypto::{CryptoProvider, SupportedKxGroup};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::WebPkiClientVerifier;
use rustls::{DigitallySignedStruct, DistinguishedName, SignatureScheme, SupportedCipherSuite};
use serde::Deserialize;

/// The file as written: the toolkit's keys, nothing else (an unknown key is an error, as the
/// toolkit's strict YAML decoding makes it).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    tls_server_config: Option<RawTls>,
    http_server_config: Option<RawHttp>,
    basic_auth_users: Option<BTreeMap<String, String>>,
    rate_limit: Option<RawRateLimit>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTls {
    cert: Option<String>,
    key: Option<String>,
    client_ca: Option<String>,
    cert_file: Option<String>,
    key_file: Option<String>,
    client_auth_type: Option<String>,
    client_ca_file: Option<String>,
    client_allowed_sans: Option<Vec<String>>,
    min_version: Option<String>,
    max_version: Option<String>,
    cipher_suites: Option<Vec<String>>,
    prefer_server_cipher_suites: Option<bool>,
    curve_preferences: Option<Vec<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHttp {
    #[allow(dead_code)] // accepted for compatibility; the endpoint speaks HTTP/1.1
    http2: Option<bool>,
    headers: Option<BTreeMap<String, String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRateLimit {
    interval: Option<serde_norway::Value>,
    burst: Option<i64>,
}

/// One thing wrong with the file: the key in the file, its value as written, and what is wrong
/// or allowed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub key: String,
    pub value: String,
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.key.is_empty() {
            write!(f, "{}", self.message)
        } else if self.value.is_empty() {
            write!(f, "{}: {}", self.key, self.message)
        } else {
            write!(f, "{} = {}: {}", self.key, self.value, self.message)
        }
    }
}

fn problem(key: &str, value: impl fmt::Display, message: impl Into<String>) -> Problem {
    Problem {
        key: key.to_string(),
        value: value.to_string(),
        message: message.into(),
    }
}

/// The token bucket of the toolkit's `rate_limit`: one request per `interval`, bursts of `burst`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimit {
    pub interval: Duration,
    pub burst: u32,
}

/// How the server asks for client certificates (`client_auth_type`, named as Go's
/// `tls.ClientAuthType` values the toolkit takes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientAuth {
    NoClientCert,
    RequestClientCert,
    RequireAnyClientCert,
    VerifyClientCertIfGiven,
    RequireAndVerifyClientCert,
}

impl ClientAuth {
    pub fn as_str(self) -> &'static str {
        match self {
            ClientAuth::NoClientCert => "NoClientCert",
            ClientAuth::RequestClientCert => "RequestClientCert",
            ClientAuth::RequireAnyClientCert => "RequireAnyClientCert",
            ClientAuth::VerifyClientCertIfGiven => "VerifyClientCertIfGiven",
            ClientAuth::RequireAndVerifyClientCert => "RequireAndVerifyClientCert",
        }
    }

    fn parse(s: &str) -> Option<ClientAuth> {
        Some(match s {
            "" | "NoClientCert" => ClientAuth::NoClientCert,
            "RequestClientCert" => ClientAuth::RequestClientCert,
            // "RequireClientCert" is the toolkit's older spelling, still accepted there.
            "RequireAnyClientCert" | "RequireClientCert" => ClientAuth::RequireAnyClientCert,
            "VerifyClientCertIfGiven" => ClientAuth::VerifyClientCertIfGiven,
            "RequireAndVerifyClientCert" => ClientAuth::RequireAndVerifyClientCert,
            _ => return None,
        })
    }

    fn verifies(self) -> bool {
        matches!(
            self,
            ClientAuth::VerifyClientCertIfGiven | ClientAuth::RequireAndVerifyClientCert
        )
    }
}

/// The TLS side, ready to serve.
#[derive(Clone)]
pub struct Tls {
    pub config: Arc<rustls::ServerConfig>,
    pub client_auth: ClientAuth,
}

impl fmt::Debug for Tls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Tls")
            .field("client_auth", &self.client_auth)
            .finish_non_exhaustive()
    }
}

/// The file, validated and ready: what the endpoint serves with.
#[derive(Clone, Default)]
pub struct WebConfig {
    /// Present when the file configures TLS (a certificate, a key, a client CA or a client
    /// auth type, as the toolkit decides); plain HTTP otherwise.
    pub tls: Option<Tls>,
    /// User name -> bcrypt hash. Empty: no authentication.
    pub users: BTreeMap<String, String>,
    /// Extra response headers, on every response (401s included).
    pub headers: Vec<(HeaderName, HeaderValue)>,
    pub rate_limit: Option<RateLimit>,
}

impl fmt::Debug for WebConfig {
    // No hashes, no keys: this may end up in a log.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WebConfig")
            .field("tls", &self.tls)
            .field("users", &self.users.keys().collect::<Vec<_>>())
            .field("headers", &self.headers)
            .field("rate_limit", &self.rate_limit)
            .finish()
    }
}

impl WebConfig {
    /// A line for the start-up log: what the endpoint enforces.
    pub fn describe(&self) -> String {
        let mut parts = Vec::new();
        match &self.tls {
            Some(t) => parts.push(format!(
                "TLS (client certificates: {})",
                t.client_auth.as_str()
            )),
            None => parts.push("plain HTTP".to_string()),
        }
        if self.users.is_empty() {
            parts.push("no basic auth".to_string());
        } else {
            parts.push(format!("basic auth ({} users)", self.users.len()));
        }
        if let Some(r) = self.rate_limit {
            parts.push(format!(
                "rate limit 1 per {} (burst {})",
                humantime::format_duration(r.interval),
                r.burst
            ));
        }
        parts.join(", ")
    }
}

/// Reads and validates the file at `path`. Relative file names in it are relative to the
/// file's own directory, as the toolkit resolves them.
pub fn load(path: &Path) -> Result<WebConfig, Vec<Problem>> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| vec![problem("", "", format!("cannot read the file: {e}"))])?;
    let dir = path.parent().unwrap_or(Path::new("."));
    parse(&text, dir)
}

/// How deep the file's `{...}` and `[...]` may nest. A web configuration's deepest value is
/// three levels down; the YAML parser's time grows with the square of a flow collection's depth
/// (a 300 KB file of `{` after a key took five minutes, found by fuzzing), so deeper text is
/// refused before it is parsed.
const MAX_FLOW_DEPTH: usize = 32;

/// Whether `text` nests flow collections deeper than [`MAX_FLOW_DEPTH`]. Every bracket counts,
/// in quotes and comments too: telling those apart is the parser's job (a `"` inside a plain
/// scalar opens nothing), and no web configuration has 32 unclosed brackets in a value.
fn nests_too_deep(text: &str) -> bool {
    let mut depth = 0usize;
    for b in text.bytes() {
        match b {
            b'{' | b'[' => {
                depth += 1;
                if depth > MAX_FLOW_DEPTH {
                    return true;
                }
            }
            b'}' | b']' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    false
}

/// Validates the file's text; `dir` is where relative file names point.
pub fn parse(text: &str, dir: &Path) -> Result<WebConfig, Vec<Problem>> {
    if nests_too_deep(text) {
        return Err(vec![problem(
            "",
            "",
            format!(
                "not a valid web configuration: brackets nested more than {MAX_FLOW_DEPTH} \
                 deep"
            ),
        )]);
    }
    // An empty file is a valid one (the toolkit's too): no TLS, no auth.
    let raw: RawFile = if text.trim().is_empty() {
        RawFile::default()
    } else {
        serde_norway::from_str::<Option<RawFile>>(text)
            .map_err(|e| {
                vec![problem(
                    "",
                    "",
                    format!("not a valid web configuration: {e}"),
                )]
            })?
            .unwrap_or_default()
    };
    let mut problems = Vec::new();
    let tls = match raw.tls_server_config {
        Some(t) => tls(t, dir, &mut problems),
        None => None,
    };
    let users = users(raw.basic_auth_users.unwrap_or_default(), &mut problems);
    let headers = headers(
        raw.http_server_config
            .and_then(|h| h.headers)
            .unwrap_or_default(),
        &mut problems,
    );
    let rate_limit = raw.rate_limit.and_then(|r| rate_limit(r, &mut problems));
    if problems.is_empty() {
        Ok(WebConfig {
            tls,
            users,
            headers,
            rate_limit,
        })
    } else {
        Err(problems)
    }
}

fn users(raw: BTreeMap<String, String>, problems: &mut Vec<Problem>) -> BTreeMap<String, String> {
    for (user, hash) in &raw {
        let key = format!("basic_auth_users.{user}");
        if user.contains(':') {
            problems.push(problem(
                &key,
                "<hidden>",
                "a user name cannot contain ':' (basic auth separates name and password with it)",
            ));
        }
        match hash.parse::<bcrypt::HashParts>() {
            Ok(parts) if (4..=31).contains(&parts.get_cost()) => {}
            Ok(parts) => problems.push(problem(
                &key,
                "<hidden>",
                format!(
                    "bcrypt cost {} is out of range; expected a bcrypt hash with a cost of 4 to 31",
                    parts.get_cost()
                ),
            )),
            Err(e) => problems.push(problem(
                &key,
                "<hidden>",
                format!(
                    "is not a bcrypt hash ({e}); expected a hash such as `htpasswd -nBC 10 \"\" | tr -d ':\\n'` prints ($2y$10$ followed by 53 characters), never the password itself"
                ),
            )),
        }
    }
    raw
}

/// The headers the toolkit lets a file add, and the values it allows (none listed: any).
const EXTRA_HEADERS: &[(&str, &[&str])] = &[
    ("Strict-Transport-Security", &[]),
    ("X-Content-Type-Options", &["nosniff"]),
    ("X-Frame-Options", &["deny", "sameorigin"]),
    ("X-XSS-Protection", &[]),
    ("Content-Security-Policy", &[]),
];

fn headers(
    raw: BTreeMap<String, String>,
    problems: &mut Vec<Problem>,
) -> Vec<(HeaderName, HeaderValue)> {
    let mut out = Vec::new();
    for (name, value) in raw {
        let key = format!("http_server_config.headers.{name}");
        let Some((_, allowed)) = EXTRA_HEADERS.iter().find(|(n, _)| *n == name) else {
            problems.push(problem(
                &key,
                format!("{value:?}"),
                format!(
                    "this header cannot be configured; expected one of {}",
                    EXTRA_HEADERS
                        .iter()
                        .map(|(n, _)| *n)
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            ));
            continue;
        };
        if value.is_empty() {
            continue; // "unset if blank"
        }
        if !allowed.is_empty() && !allowed.contains(&value.as_str()) {
            problems.push(problem(
                &key,
                format!("{value:?}"),
                format!("expected one of: {}", allowed.join(", ")),
            ));
            continue;
        }
        match HeaderValue::from_str(&value) {
            Ok(v) => out.push((HeaderName::from_bytes(name.as_bytes()).expect("listed"), v)),
            Err(_) => problems.push(problem(
                &key,
                format!("{value:?}"),
                "is not a valid header value (printable ASCII, no line breaks)",
            )),
        }
    }
    out
}

fn rate_limit(raw: RawRateLimit, problems: &mut Vec<Problem>) -> Option<RateLimit> {
    let interval = match raw.interval {
        None | Some(serde_norway::Value::Null) => Duration::ZERO,
        // A bare number is nanoseconds, as Go decodes a time.Duration.
        Some(serde_norway::Value::Number(n)) => match n.as_u64() {
            Some(ns) => Duration::from_nanos(ns),
            None => {
                problems.push(problem(
                    "rate_limit.interval",
                    n,
                    "expected a duration such as \"1s\" or \"100ms\"",
                ));
                return None;
            }
        },
        Some(serde_norway::Value::String(s)) => match parse_go_duration(&s) {
            Some(d) => d,
            None => {
                problems.push(problem(
                    "rate_limit.interval",
                    format!("{s:?}"),
                    "expected a Go duration such as \"1s\", \"100ms\" or \"1m30s\"",
                ));
                return None;
            }
        },
        Some(other) => {
            problems.push(problem(
                "rate_limit.interval",
                format!("{other:?}"),
                "expected a duration such as \"1s\" or \"100ms\"",
            ));
            return None;
        }
    };
    if interval.is_zero() {
        return None; // 0 disables the limiter, as in the toolkit
    }
    let burst = raw.burst.unwrap_or(0);
    match u32::try_from(burst) {
        Ok(b) if b >= 1 => Some(RateLimit { interval, burst: b }),
        _ => {
            problems.push(problem(
                "rate_limit.burst",
                burst,
                "expected a whole number of at least 1 with an interval set (a burst of 0 would refuse every request)",
            ));
            None
        }
    }
}

/// Go's `time.ParseDuration` format: decimal numbers with a unit each, `1h30m`, `1.5s`, `100ms`.
fn parse_go_duration(s: &str) -> Option<Duration> {
    let s = s.trim();
    if s == "0" {
        return Some(Duration::ZERO);
    }
    if s.is_empty() || s.starts_with('-') {
        return None;
    }
    let s = s.strip_prefix('+').unwrap_or(s);
    let mut total = 0f64;
    let mut rest = s;
    while !rest.is_empty() {
        let num_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        if num_len == 0 {
            return None;
        }
        let n: f64 = rest[..num_len].parse().ok()?;
        rest = &rest[num_len..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let scale = match &rest[..unit_len] {
            "ns" => 1e-9,
            "us" | "µs" | "μs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            _ => return None,
        };
        rest = &rest[unit_len..];
        total += n * scale;
    }
    Duration::try_from_secs_f64(total).ok()
}

/// Go's names of the TLS 1.2 suites rustls implements (with ring), and the rustls suite.
fn tls12_suite(name: &str) -> Option<SupportedCipherSuite> {
    use rustls::crypto::ring::cipher_suite as cs;
    Some(match name {
        "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256" => cs::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
        "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384" => cs::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
        "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256"
        | "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305" => {
            cs::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256
        }
        "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256" => cs::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,
        "TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384" => cs::TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384,
        "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256" | "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305" => {
            cs::TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256
        }
        _ => return None,
    })
}

/// TLS 1.3 suite names: Go accepts them in `cipher_suites` and ignores them (TLS 1.3 suites are
/// not configurable there); so does this.
const TLS13_SUITES: &[&str] = &[
    "TLS_AES_128_GCM_SHA256",
    "TLS_AES_256_GCM_SHA384",
    "TLS_CHACHA20_POLY1305_SHA256",
];

/// Suites Go's `tls.CipherSuites()` lists (so the toolkit accepts them) that rustls does not
/// implement: CBC modes and RSA key exchange.
const GO_ONLY_SUITES: &[&str] = &[
    "TLS_RSA_WITH_AES_128_CBC_SHA",
    "TLS_RSA_WITH_AES_256_CBC_SHA",
    "TLS_RSA_WITH_AES_128_GCM_SHA256",
    "TLS_RSA_WITH_AES_256_GCM_SHA384",
    "TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA",
    "TLS_ECDHE_ECDSA_WITH_AES_256_CBC_SHA",
    "TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA",
    "TLS_ECDHE_RSA_WITH_AES_256_CBC_SHA",
];

const SUPPORTED_SUITES: &str = "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256, TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384, TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256, TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256, TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384, TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256 (and the TLS 1.3 suites, which are always on)";

fn curve(name: &str) -> Result<&'static dyn SupportedKxGroup, String> {
    use rustls::crypto::ring::kx_group;
    match name {
        "X25519" => Ok(kx_group::X25519),
        "CurveP256" => Ok(kx_group::SECP256R1),
        "CurveP384" => Ok(kx_group::SECP384R1),
        "CurveP521" => Err(
            "P-521 is not implemented by this server's TLS library (rustls with ring); expected X25519, CurveP256 or CurveP384".into(),
        ),
        _ => Err("unknown curve; expected X25519, CurveP256 or CurveP384".into()),
    }
}

#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug)]
enum Version {
    Tls10,
    Tls11,
    Tls12,
    Tls13,
}

fn version(key: &str, value: &Option<String>, problems: &mut Vec<Problem>) -> Option<Version> {
    let v = value.as_deref()?;
    let parsed = match v {
        "TLS10" => Version::Tls10,
        "TLS11" => Version::Tls11,
        "TLS12" => Version::Tls12,
        "TLS13" => Version::Tls13,
        _ => {
            problems.push(problem(
                key,
                format!("{v:?}"),
                "unknown TLS version; expected TLS12 or TLS13 (TLS10 and TLS11 only as min_version, served as TLS12)",
            ));
            return None;
        }
    };
    Some(parsed)
}

/// Reads `inline` or the file `file` names (relative to `dir`), for the key pair `inline_key`
/// / `file_key`.
fn pem_source(
    dir: &Path,
    inline: &Option<String>,
    file: &Option<String>,
    inline_key: &str,
    file_key: &str,
    problems: &mut Vec<Problem>,
) -> Option<(String, Vec<u8>)> {
    let inline = inline.as_deref().filter(|s| !s.is_empty());
    let file = file.as_deref().filter(|s| !s.is_empty());
    match (inline, file) {
        (Some(_), Some(f)) => {
            problems.push(problem(
                file_key,
                format!("{f:?}"),
                format!("give either {inline_key} or {file_key}, not both"),
            ));
            None
        }
        (Some(text), None) => Some((inline_key.to_string(), text.as_bytes().to_vec())),
        (None, Some(f)) => {
            let path = resolve(dir, f);
            match std::fs::read(&path) {
                Ok(bytes) => Some((file_key.to_string(), bytes)),
                Err(e) => {
                    problems.push(problem(
                        file_key,
                        format!("{f:?}"),
                        format!("cannot read {}: {e}", path.display()),
                    ));
                    None
                }
            }
        }
        (None, None) => None,
    }
}

fn resolve(dir: &Path, f: &str) -> PathBuf {
    let p = Path::new(f);
    if p.is_absolute() {
        p.to_path_buf()
    } else {
        dir.join(p)
    }
}

fn shown(raw: &RawTls, key: &str) -> String {
    let v = match key {
        "cert_file" => &raw.cert_file,
        "key_file" => &raw.key_file,
        "client_ca_file" => &raw.client_ca_file,
        _ => return "(inline)".into(),
    };
    format!("{:?}", v.as_deref().unwrap_or(""))
}

/// Whether a value is given (an empty string counts as not given, as in the toolkit).
fn set(v: &Option<String>) -> bool {
    v.as_deref().is_some_and(|s| !s.is_empty())
}

/// The full name of a `tls_server_config` key.
fn tls_key(k: &str) -> String {
    format!("tls_server_config.{k}")
}

/// A problem with the PEM read for `key` (a full key, as [`pem_source`] returns it).
fn pem_problem(raw: &RawTls, key: &str, message: impl Into<String>) -> Problem {
    problem(
        key,
        shown(raw, key.trim_start_matches("tls_server_config.")),
        message,
    )
}

fn tls(raw: RawTls, dir: &Path, problems: &mut Vec<Problem>) -> Option<Tls> {
    // The toolkit's test for "TLS is configured"; the other keys alone leave plain HTTP.
    let enabled = set(&raw.cert)
        || set(&raw.key)
        || set(&raw.cert_file)
        || set(&raw.key_file)
        || set(&raw.client_ca)
        || set(&raw.client_ca_file)
        || set(&raw.client_auth_type);
    if !enabled {
        return None;
    }
    let before = problems.len();
    let (chain, private_key) = server_identity(&raw, dir, problems);
    let client_auth = client_auth(&raw, problems);
    let roots = client_roots(&raw, dir, client_auth, problems);
    let versions = versions(&raw, problems);
    let mut provider = rustls::crypto::ring::default_provider();
    cipher_suites(&raw, &versions, &mut provider, problems);
    curves(&raw, &mut provider, problems);
    let allowed_sans = allowed_sans(&raw, client_auth, problems);
    if problems.len() > before {
        return None;
    }
    let (chain, private_key) = (chain?, private_key?);
    let provider = Arc::new(provider);
    let built =
        client_verifier(client_auth, roots, allowed_sans, &provider, &raw).and_then(|verifier| {
            server_config(provider, &versions, verifier, chain, private_key, &raw)
        });
    match built {
        Ok(mut config) => {
            config.ignore_client_order = raw.prefer_server_cipher_suites.unwrap_or(true);
            config.alpn_protocols = vec![b"http/1.1".to_vec()];
            Some(Tls {
                config: Arc::new(config),
                client_auth,
            })
        }
        Err(p) => {
            problems.push(p);
            None
        }
    }
}

/// The server's certificate chain (`cert` or `cert_file`) and its private key (`key` or
/// `key_file`), which TLS needs.
fn server_identity(
    raw: &RawTls,
    dir: &Path,
    problems: &mut Vec<Problem>,
) -> (
    Option<Vec<CertificateDer<'static>>>,
    Option<PrivateKeyDer<'static>>,
) {
    let cert = pem_source(
        dir,
        &raw.cert,
        &raw.cert_file,
        &tls_key("cert"),
        &tls_key("cert_file"),
        problems,
    );
    let key = pem_source(
        dir,
        &raw.key,
        &raw.key_file,
        &tls_key("key"),
        &tls_key("key_file"),
        problems,
    );
    if !set(&raw.cert) && !set(&raw.cert_file) {
        problems.push(problem(
            &tls_key("cert_file"),
            "",
            "is missing: TLS is configured (a key, a client CA or a client auth type is set), so a server certificate is needed (cert_file, or cert inline)",
        ));
    }
    if !set(&raw.key) && !set(&raw.key_file) {
        problems.push(problem(
            &tls_key("key_file"),
            "",
            "is missing: TLS is configured, so the server certificate's private key is needed (key_file, or key inline)",
        ));
    }
    let chain = cert.and_then(|(key, bytes)| cert_chain(raw, &key, &bytes, problems));
    let private_key = key.and_then(|(key, bytes)| private_key(raw, &key, &bytes, problems));
    (chain, private_key)
}

/// The certificate chain in `bytes`, read for `key`.
fn cert_chain(
    raw: &RawTls,
    key: &str,
    bytes: &[u8],
    problems: &mut Vec<Problem>,
) -> Option<Vec<CertificateDer<'static>>> {
    let chain: Result<Vec<CertificateDer<'static>>, _> =
        CertificateDer::pem_slice_iter(bytes).collect();
    match chain {
        Ok(c) if !c.is_empty() => Some(c),
        Ok(_) => {
            problems.push(pem_problem(
                raw,
                key,
                "contains no PEM certificate (-----BEGIN CERTIFICATE-----)",
            ));
            None
        }
        Err(e) => {
            problems.push(pem_problem(
                raw,
                key,
                format!("is not a valid PEM certificate chain: {e}"),
            ));
            None
        }
    }
}

/// The private key in `bytes`, read for `key`.
fn private_key(
    raw: &RawTls,
    key: &str,
    bytes: &[u8],
    problems: &mut Vec<Problem>,
) -> Option<PrivateKeyDer<'static>> {
    match PrivateKeyDer::from_pem_slice(bytes) {
        Ok(k) => Some(k),
        Err(e) => {
            problems.push(pem_problem(
                raw,
                key,
                format!("contains no usable PEM private key (PKCS#8, PKCS#1 or SEC1): {e}"),
            ));
            None
        }
    }
}

/// `client_auth_type` (none: no client certificates).
fn client_auth(raw: &RawTls, problems: &mut Vec<Problem>) -> ClientAuth {
    let Some(s) = raw.client_auth_type.as_deref() else {
        return ClientAuth::NoClientCert;
    };
    ClientAuth::parse(s).unwrap_or_else(|| {
        problems.push(problem(
            &tls_key("client_auth_type"),
            format!("{s:?}"),
            "expected NoClientCert, RequestClientCert, RequireAnyClientCert, VerifyClientCertIfGiven or RequireAndVerifyClientCert",
        ));
        ClientAuth::NoClientCert
    })
}

/// The CAs client certificates are verified against (`client_ca` or `client_ca_file`), checked
/// to fit `client_auth`: a CA without a policy that verifies, or such a policy without a CA,
/// is a problem.
fn client_roots(
    raw: &RawTls,
    dir: &Path,
    client_auth: ClientAuth,
    problems: &mut Vec<Problem>,
) -> Option<Arc<rustls::RootCertStore>> {
    let ca = pem_source(
        dir,
        &raw.client_ca,
        &raw.client_ca_file,
        &tls_key("client_ca"),
        &tls_key("client_ca_file"),
        problems,
    );
    let has_ca = set(&raw.client_ca) || set(&raw.client_ca_file);
    if has_ca && client_auth == ClientAuth::NoClientCert {
        problems.push(problem(
            &tls_key("client_auth_type"),
            format!("{:?}", raw.client_auth_type.as_deref().unwrap_or("")),
            "a client CA is configured without a client auth policy; set client_auth_type to RequireAndVerifyClientCert (or VerifyClientCertIfGiven)",
        ));
    }
    if client_auth.verifies() && !has_ca {
        problems.push(problem(
            &tls_key("client_ca_file"),
            "",
            format!(
                "is missing: client_auth_type {} verifies client certificates, which needs the CA that issued them (client_ca_file, or client_ca inline)",
                client_auth.as_str()
            ),
        ));
    }
    let (key, bytes) = ca?;
    let mut roots = rustls::RootCertStore::empty();
    let mut n = 0;
    for c in CertificateDer::pem_slice_iter(&bytes) {
        match c
            .map_err(|e| e.to_string())
            .and_then(|c| roots.add(c).map_err(|e| e.to_string()))
        {
            Ok(()) => n += 1,
            Err(e) => {
                problems.push(pem_problem(
                    raw,
                    &key,
                    format!("holds a certificate that cannot be used as a CA: {e}"),
                ));
                return None;
            }
        }
    }
    if n == 0 {
        problems.push(pem_problem(raw, &key, "contains no PEM certificate"));
        return None;
    }
    Some(Arc::new(roots))
}

/// The protocol versions `min_version` and `max_version` allow, of those rustls speaks.
fn versions(
    raw: &RawTls,
    problems: &mut Vec<Problem>,
) -> Vec<&'static rustls::SupportedProtocolVersion> {
    let min =
        version(&tls_key("min_version"), &raw.min_version, problems).unwrap_or(Version::Tls12);
    let max =
        version(&tls_key("max_version"), &raw.max_version, problems).unwrap_or(Version::Tls13);
    if max < Version::Tls12 {
        problems.push(problem(
            &tls_key("max_version"),
            format!("{:?}", raw.max_version.as_deref().unwrap_or("")),
            "this server's TLS library (rustls) speaks TLS 1.2 and 1.3 only; expected TLS12 or TLS13",
        ));
    }
    if min > max {
        problems.push(problem(
            &tls_key("min_version"),
            format!("{:?}", raw.min_version.as_deref().unwrap_or("")),
            format!(
                "is above max_version {:?}",
                raw.max_version.as_deref().unwrap_or("TLS13")
            ),
        ));
    }
    let mut versions: Vec<&'static rustls::SupportedProtocolVersion> = Vec::new();
    if min <= Version::Tls12 && max >= Version::Tls12 {
        versions.push(&rustls::version::TLS12);
    }
    if max >= Version::Tls13 {
        versions.push(&rustls::version::TLS13);
    }
    versions
}

/// Narrows `provider`'s TLS 1.2 suites to `cipher_suites` where the list is given (the TLS 1.3
/// suites stay: they are not configurable).
fn cipher_suites(
    raw: &RawTls,
    versions: &[&'static rustls::SupportedProtocolVersion],
    provider: &mut CryptoProvider,
    problems: &mut Vec<Problem>,
) {
    let Some(names) = raw.cipher_suites.as_ref().filter(|n| !n.is_empty()) else {
        return;
    };
    let key = tls_key("cipher_suites");
    let mut tls12 = Vec::new();
    for name in names {
        if let Some(s) = tls12_suite(name) {
            tls12.push(s);
        } else if TLS13_SUITES.contains(&name.as_str()) {
            // ignored, as Go does
        } else if GO_ONLY_SUITES.contains(&name.as_str()) {
            problems.push(problem(
                &key,
                format!("{name:?}"),
                format!("this suite is not implemented by this server's TLS library (rustls: no CBC modes, no RSA key exchange); supported: {SUPPORTED_SUITES}"),
            ));
        } else {
            problems.push(problem(
                &key,
                format!("{name:?}"),
                format!("unknown cipher suite; supported: {SUPPORTED_SUITES}"),
            ));
        }
    }
    if tls12.is_empty() && versions.contains(&&rustls::version::TLS12) {
        problems.push(problem(
            &key,
            format!("{names:?}"),
            "leaves no TLS 1.2 suite while TLS 1.2 is allowed; list at least one TLS 1.2 suite, or set min_version: TLS13",
        ));
    }
    let mut suites: Vec<SupportedCipherSuite> = provider
        .cipher_suites
        .iter()
        .copied()
        .filter(|s| s.version() == &rustls::version::TLS13)
        .collect();
    suites.extend(tls12);
    provider.cipher_suites = suites;
}

/// Sets `provider`'s key exchange groups to `curve_preferences` where the list is given.
fn curves(raw: &RawTls, provider: &mut CryptoProvider, problems: &mut Vec<Problem>) {
    let Some(names) = raw.curve_preferences.as_ref().filter(|n| !n.is_empty()) else {
        return;
    };
    let mut groups = Vec::new();
    for name in names {
        match curve(name) {
            Ok(g) => groups.push(g),
            Err(e) => problems.push(problem(
                &tls_key("curve_preferences"),
                format!("{name:?}"),
                e,
            )),
        }
    }
    provider.kx_groups = groups;
}

/// `client_allowed_sans`, which only means something where clients present certificates.
fn allowed_sans(
    raw: &RawTls,
    client_auth: ClientAuth,
    problems: &mut Vec<Problem>,
) -> Option<Vec<String>> {
    let allowed_sans = raw.client_allowed_sans.clone().filter(|s| !s.is_empty());
    if allowed_sans.is_some() && client_auth == ClientAuth::NoClientCert {
        problems.push(problem(
            &tls_key("client_allowed_sans"),
            format!(
                "{:?}",
                raw.client_allowed_sans.as_deref().unwrap_or_default()
            ),
            "needs client certificates; set client_auth_type to RequireAndVerifyClientCert",
        ));
    }
    allowed_sans
}

/// What checks the client certificates `client_auth` asks for (`None`: none are asked for),
/// wrapped to require one of `allowed_sans` where given.
fn client_verifier(
    client_auth: ClientAuth,
    roots: Option<Arc<rustls::RootCertStore>>,
    allowed_sans: Option<Vec<String>>,
    provider: &Arc<CryptoProvider>,
    raw: &RawTls,
) -> Result<Option<Arc<dyn ClientCertVerifier>>, Problem> {
    let verifier: Option<Arc<dyn ClientCertVerifier>> = match client_auth {
        ClientAuth::NoClientCert => None,
        ClientAuth::RequestClientCert | ClientAuth::RequireAnyClientCert => {
            Some(Arc::new(AnyClientCert {
                mandatory: client_auth == ClientAuth::RequireAnyClientCert,
                provider: provider.clone(),
            }))
        }
        ClientAuth::VerifyClientCertIfGiven | ClientAuth::RequireAndVerifyClientCert => {
            let mut builder = WebPkiClientVerifier::builder_with_provider(
                roots.expect("checked above"),
                provider.clone(),
            );
            if client_auth == ClientAuth::VerifyClientCertIfGiven {
                builder = builder.allow_unauthenticated();
            }
            let verifier = builder.build().map_err(|e| {
                problem(
                    &tls_key("client_ca_file"),
                    shown(raw, "client_ca_file"),
                    format!("cannot verify clients with it: {e}"),
                )
            })?;
            Some(verifier)
        }
    };
    Ok(match (verifier, allowed_sans) {
        (Some(inner), Some(allowed)) => Some(Arc::new(AllowedSans { inner, allowed }) as _),
        (v, _) => v,
    })
}

/// The rustls server configuration: `versions`, the client `verifier`, the certificate
/// `chain` and its `private_key`.
fn server_config(
    provider: Arc<CryptoProvider>,
    versions: &[&'static rustls::SupportedProtocolVersion],
    verifier: Option<Arc<dyn ClientCertVerifier>>,
    chain: Vec<CertificateDer<'static>>,
    private_key: PrivateKeyDer<'static>,
    raw: &RawTls,
) -> Result<rustls::ServerConfig, Problem> {
    let builder = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(versions)
        .map_err(|e| {
            problem(
                &tls_key("cipher_suites"),
                format!("{:?}", raw.cipher_suites.as_deref().unwrap_or_default()),
                format!("no usable TLS configuration: {e}"),
            )
        })?;
    let builder = match verifier {
        Some(v) => builder.with_client_cert_verifier(v),
        None => builder.with_no_client_auth(),
    };
    builder.with_single_cert(chain, private_key).map_err(|e| {
        let key = if set(&raw.key_file) {
            "key_file"
        } else {
            "key"
        };
        problem(
            &tls_key(key),
            shown(raw, key),
            format!("does not fit the certificate: {e}"),
        )
    })
}

/// `RequestClientCert` and `RequireAnyClientCert`: a client certificate is asked for (and, for
/// the second, required) but not checked against any CA, as Go's modes of those names do. The
/// handshake signature is still checked, so the client does hold the certificate's key.
#[derive(Debug)]
struct AnyClientCert {
    mandatory: bool,
    provider: Arc<CryptoProvider>,
}

impl ClientCertVerifier for AnyClientCert {
    fn client_auth_mandatory(&self) -> bool {
        self.mandatory
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// `client_allowed_sans`: after the inner verifier accepts the chain, the client certificate
/// must carry one of these subject alternative names (DNS name, IP address, e-mail or URI),
/// matched exactly, as the toolkit does.
#[derive(Debug)]
struct AllowedSans {
    inner: Arc<dyn ClientCertVerifier>,
    allowed: Vec<String>,
}

/// Every subject alternative name of a DER certificate, as text.
pub fn subject_alt_names(der: &[u8]) -> Result<Vec<String>, String> {
    use x509_parser::extensions::GeneralName;
    let (_, cert) = x509_parser::parse_x509_certificate(der).map_err(|e| e.to_string())?;
    let mut out = Vec::new();
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for name in &san.value.general_names {
            match name {
                GeneralName::DNSName(s) | GeneralName::RFC822Name(s) | GeneralName::URI(s) => {
                    out.push(s.to_string())
                }
                GeneralName::IPAddress(b) => {
                    let ip = match b.len() {
                        4 => IpAddr::from(<[u8; 4]>::try_from(*b).expect("4 bytes")),
                        16 => IpAddr::from(<[u8; 16]>::try_from(*b).expect("16 bytes")),
                        _ => continue,
                    };
                    out.push(ip.to_string())
                }
                _ => {}
            }
        }
    }
    Ok(out)
}

impl ClientCertVerifier for AllowedSans {
    fn offer_client_auth(&self) -> bool {
        self.inner.offer_client_auth()
    }

    fn client_auth_mandatory(&self) -> bool {
        self.inner.client_auth_mandatory()
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.inner.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let verified = self
            .inner
            .verify_client_cert(end_entity, intermediates, now)?;
        let names = subject_alt_names(end_entity).map_err(|_| {
            rustls::Error::InvalidCertificate(rustls::CertificateError::BadEncoding)
        })?;
        if names.iter().any(|n| self.allowed.contains(n)) {
            Ok(verified)
        } else {
            Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::ApplicationVerificationFailure,
            ))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

#[cfg(test)]
pub(crate) mod tests;
