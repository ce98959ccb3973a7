//! From raw inputs (file text, environment variables, flags) to one figment, without I/O.
//!
//! Every variable and every flag becomes its own figment provider. Figment tags each value with
//! the provider it came from, so after merging, the tag of any value (even one deep inside a
//! `FIX_MONITOR_TARGETS` list) leads back to the exact variable or flag; [`origin_of`] turns
//! that into an [`Origin`].
//!
//! Lowest first: the standard `OTEL_*` variables ([`OTEL_VARS`]), the file, the `FIX_MONITOR_*`
//! and legacy variables, the flags.

use std::collections::BTreeMap;
use std::path::Path;

use figment::providers::{Format, Toml};
use figment::value::{Dict, Map, Tag, Value};
use figment::{Figment, Metadata, Profile, Provider, Source};

use super::error::{ConfigError, ErrorKind, Origin};
use super::{defaults, ConfigArgs};

pub(crate) const ENV_PREFIX: &str = "FIX_MONITOR_";
/// Names the config file; read by `load_from`, not a key of the schema.
pub(crate) const ENV_CONFIG: &str = "FIX_MONITOR_CONFIG";
pub(crate) const ENV_TARGETS: &str = "FIX_MONITOR_TARGETS";
/// The original exporter's variables.
pub(crate) const ENV_LEGACY_IP: &str = "DOWNSTREAM_IP";
pub(crate) const ENV_LEGACY_PORT: &str = "DOWNSTREAM_PORT";

/// How a standard OpenTelemetry variable's text becomes a value of our schema.
#[derive(Clone, Copy)]
enum OtelValue {
    /// Taken whole, as a string.
    Text,
    /// Integer milliseconds (`5000`), as the specification has it; kept as `"5000ms"` so that
    /// our duration parser (where a bare integer means seconds) reads it right.
    Millis,
    /// `key=value,key=value` with percent-encoded values (the W3C baggage format).
    Headers,
}

/// The standard variables fix-monitor honours, below its own layers, and the key each sets.
/// In this order: a signal-specific `OTEL_EXPORTER_OTLP_METRICS_*` comes after, and so beats,
/// its generic `OTEL_EXPORTER_OTLP_*`.
#[rustfmt::skip]
const OTEL_VARS: &[(&str, &[&str], OtelValue)] = &[
    ("OTEL_EXPORTER_OTLP_ENDPOINT", &["otlp", "endpoint"], OtelValue::Text),
    (ENV_OTEL_METRICS_ENDPOINT, &["otlp", "endpoint"], OtelValue::Text),
    ("OTEL_EXPORTER_OTLP_PROTOCOL", &["otlp", "protocol"], OtelValue::Text),
    ("OTEL_EXPORTER_OTLP_METRICS_PROTOCOL", &["otlp", "protocol"], OtelValue::Text),
    ("OTEL_EXPORTER_OTLP_HEADERS", &["otlp", "headers"], OtelValue::Headers),
    ("OTEL_EXPORTER_OTLP_METRICS_HEADERS", &["otlp", "headers"], OtelValue::Headers),
    ("OTEL_EXPORTER_OTLP_TIMEOUT", &["otlp", "timeout"], OtelValue::Millis),
    ("OTEL_EXPORTER_OTLP_METRICS_TIMEOUT", &["otlp", "timeout"], OtelValue::Millis),
    ("OTEL_EXPORTER_OTLP_CERTIFICATE", &["otlp", "tls", "ca_file"], OtelValue::Text),
    ("OTEL_EXPORTER_OTLP_METRICS_CERTIFICATE", &["otlp", "tls", "ca_file"], OtelValue::Text),
    ("OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE", &["otlp", "tls", "cert_file"], OtelValue::Text),
    ("OTEL_EXPORTER_OTLP_METRICS_CLIENT_CERTIFICATE", &["otlp", "tls", "cert_file"], OtelValue::Text),
    ("OTEL_EXPORTER_OTLP_CLIENT_KEY", &["otlp", "tls", "key_file"], OtelValue::Text),
    ("OTEL_EXPORTER_OTLP_METRICS_CLIENT_KEY", &["otlp", "tls", "key_file"], OtelValue::Text),
    ("OTEL_METRIC_EXPORT_INTERVAL", &["otlp", "interval"], OtelValue::Millis),
    ("OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE", &["otlp", "temporality"], OtelValue::Text),
];

/// The signal-specific endpoint is the full URL, used as is (`resolve` looks for this origin).
pub(crate) const ENV_OTEL_METRICS_ENDPOINT: &str = "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT";
/// The variables among [`OTEL_VARS`] that give an endpoint, and so turn push on.
const OTEL_ENDPOINT_VARS: &[&str] = &["OTEL_EXPORTER_OTLP_ENDPOINT", ENV_OTEL_METRICS_ENDPOINT];
const ENV_OTLP: &str = "FIX_MONITOR_OTLP";
const ENV_OTLP_ENABLED: &str = "FIX_MONITOR_OTLP__ENABLED";
const ENV_OTLP_ENDPOINT: &str = "FIX_MONITOR_OTLP__ENDPOINT";

// Provider names; `origin_of` maps them back to `Origin` variants.
const ENV_LAYER: &str = "environment variable";
const FLAG_LAYER: &str = "command-line flag";
const FILE_LAYER: &str = "config file";

/// Is this an environment variable the configuration reads?
pub(crate) fn is_ours(name: &str) -> bool {
    name.starts_with(ENV_PREFIX)
        || name == ENV_LEGACY_IP
        || name == ENV_LEGACY_PORT
        || OTEL_VARS.iter().any(|(var, _, _)| *var == name)
        || RESOURCE_VARS.contains(&name)
}

/// Read by the SDK's resource detectors, not by the configuration; kept only so that
/// `fix-monitor config` can show them.
pub(crate) const RESOURCE_VARS: &[&str] = &["OTEL_SERVICE_NAME", "OTEL_RESOURCE_ATTRIBUTES"];

/// Parses TOML text into a (still untyped) tree.
pub(crate) fn parse_toml(text: &str) -> Result<Dict, String> {
    Toml::string(text)
        .data()
        .map(|mut profiles| profiles.remove(&Profile::Default).unwrap_or_default())
        .map_err(|e| e.to_string())
}

/// One provider's worth of values, and the metadata figment tags them with.
pub(crate) struct Layer {
    metadata: Metadata,
    dict: Dict,
}

impl Provider for Layer {
    fn metadata(&self) -> Metadata {
        self.metadata.clone()
    }

    fn data(&self) -> Result<Map<Profile, Dict>, figment::Error> {
        Ok(Profile::Default.collect(self.dict.clone()))
    }
}

impl Layer {
    /// The merged tree again, for `raw::extract`: its values keep the tags of the providers
    /// they came from (figment tags only untagged values).
    pub(crate) fn merged(dict: Dict) -> Layer {
        Layer {
            metadata: Metadata::named("merged configuration"),
            dict,
        }
    }

    fn file(path: &Path, dict: Dict) -> Layer {
        Layer {
            metadata: Metadata::from(FILE_LAYER, Source::File(path.to_path_buf())),
            dict,
        }
    }

    /// A layer whose every value has the same origin label (a variable or flag name).
    fn single(layer: &'static str, label: &str, keys: &[&str], value: Value) -> Layer {
        let label = label.to_owned();
        Layer {
            metadata: Metadata::named(layer)
                .interpolater(move |_: &Profile, _: &[&str]| label.clone()),
            dict: nest(keys, value),
        }
    }

    /// A layer defining the one target of the original tools, built from several variables or
    /// flags; `labels` names the one behind each field (the last key of a value's path).
    fn target(layer: &'static str, target: Dict, labels: BTreeMap<&'static str, String>) -> Layer {
        let fallback = labels.get("address").cloned().unwrap_or_default();
        let interpolate = move |_: &Profile, keys: &[&str]| {
            keys.last()
                .and_then(|k| labels.get(k))
                .cloned()
                .unwrap_or_else(|| fallback.clone())
        };
        Layer {
            metadata: Metadata::named(layer).interpolater(interpolate),
            dict: nest(&["targets"], Value::from(vec![Value::from(target)])),
        }
    }
}

/// `["poll", "interval"], v` -> `{ poll = { interval = v } }`.
fn nest<K: AsRef<str>>(keys: &[K], value: Value) -> Dict {
    let (last, outer) = keys.split_last().expect("a key path is never empty");
    let mut dict = Dict::new();
    dict.insert(last.as_ref().to_owned(), value);
    for key in outer.iter().rev() {
        let mut parent = Dict::new();
        parent.insert(key.as_ref().to_owned(), Value::from(dict));
        dict = parent;
    }
    dict
}

/// A variable's or flag's text as a value: a `[..]` list or `{..}` table is parsed (figment's
/// syntax, as `FIX_MONITOR_TARGETS` uses), anything else stays text, which the key's check
/// reads (so `5` is a number of seconds to `poll.interval` and a string to `log.level`).
fn parse_value(raw: &str) -> Value {
    if raw.trim_start().starts_with(['[', '{']) {
        match raw.parse::<Value>() {
            Ok(value) => value,
            Err(never) => match never {},
        }
    } else {
        Value::from(raw.to_owned())
    }
}

/// A port from a variable or flag: a number when it reads as one, so that errors show it as
/// the file would (`[7000, 6000]`); else the text, for the check to reject.
fn port_value(raw: &str) -> Value {
    raw.trim()
        .parse::<i64>()
        .map(Value::from)
        .unwrap_or_else(|_| Value::from(raw.to_owned()))
}

/// Where the value with `tag` came from; `field` is the last key of its path (legacy target
/// layers name a different variable or flag per field).
pub(crate) fn origin_of(figment: &Figment, tag: Tag, field: &str) -> Origin {
    let Some(metadata) = figment.get_metadata(tag) else {
        return Origin::Default;
    };
    if let Some(Source::File(path)) = &metadata.source {
        return Origin::File(path.clone());
    }
    let label = metadata.interpolate(&Profile::Default, &[field]);
    match &*metadata.name {
        ENV_LAYER => Origin::Env(label),
        FLAG_LAYER => Origin::Flag(label),
        _ => Origin::Default,
    }
}

/// Merges file, environment and flags, in that order, into one figment. Problems that are
/// visible before merging (malformed variable names, flags that need `--ip`, rejected flags)
/// go to `errors`.
pub(crate) fn build(
    file: Option<(&Path, Dict)>,
    env: &BTreeMap<String, String>,
    args: &ConfigArgs,
    errors: &mut Vec<ConfigError>,
) -> Figment {
    let mut figment = Figment::new();
    for layer in otel_layers(env, errors) {
        figment = figment.merge(layer);
    }
    if let Some((path, mut dict)) = file {
        imply_otlp_enabled(&mut dict);
        lowercase_headers(&mut dict, Origin::File(path.to_path_buf()), errors);
        figment = figment.merge(Layer::file(path, dict));
    }
    for layer in env_layers(env, errors) {
        figment = figment.merge(layer);
    }
    for layer in flag_layers(args, errors) {
        figment = figment.merge(layer);
    }
    figment
}

/// A file's `[otlp] endpoint` without `enabled` beside it means "push there".
fn imply_otlp_enabled(dict: &mut Dict) {
    if let Some(Value::Dict(_, otlp)) = dict.get_mut("otlp") {
        if otlp.contains_key("endpoint") && !otlp.contains_key("enabled") {
            otlp.insert("enabled".into(), Value::from(true));
        }
    }
}

/// Header names are case-insensitive: lower-cased in every layer before merging, so that a
/// higher layer's `x-tenant` replaces a lower one's `X-Tenant` rather than adding a second.
fn lowercase_headers(dict: &mut Dict, origin: Origin, errors: &mut Vec<ConfigError>) {
    let Some(Value::Dict(_, otlp)) = dict.get_mut("otlp") else {
        return;
    };
    let Some(Value::Dict(_, headers)) = otlp.get_mut("headers") else {
        return;
    };
    let mut lowered = Dict::new();
    for (name, value) in std::mem::take(headers) {
        let lower = name.to_ascii_lowercase();
        if lowered.contains_key(&lower) {
            errors.push(
                ConfigError::new(
                    ErrorKind::Conflict,
                    format!("otlp.headers.{name}"),
                    format!(
                        "names the same header as another entry (header names are \
                         case-insensitive: `{lower}`); keep one"
                    ),
                )
                .value(super::raw::render(&value))
                .origin(origin.clone()),
            );
            continue;
        }
        lowered.insert(lower, value);
    }
    *headers = lowered;
}

/// The standard OpenTelemetry variables, one layer each, in [`OTEL_VARS`] order.
fn otel_layers(env: &BTreeMap<String, String>, errors: &mut Vec<ConfigError>) -> Vec<Layer> {
    let mut layers = Vec::new();
    for &(name, keys, kind) in OTEL_VARS {
        let Some(raw) = env.get(name).map(|v| v.trim()).filter(|v| !v.is_empty()) else {
            continue;
        };
        let value = match kind {
            OtelValue::Text => Value::from(raw.to_owned()),
            OtelValue::Millis => match raw.parse::<u64>() {
                Ok(ms) => Value::from(format!("{ms}ms")),
                // Not what the specification allows, but "5s" is clear enough: let the
                // duration parser judge it, naming this variable if it fails.
                Err(_) => Value::from(raw.to_owned()),
            },
            OtelValue::Headers => match parse_otel_headers(raw) {
                Ok(dict) => Value::from(dict),
                Err(message) => {
                    errors.push(
                        ConfigError::new(ErrorKind::InvalidValue, keys.join("."), message)
                            .value(super::raw::quote(raw))
                            .origin(Origin::Env(name.to_owned())),
                    );
                    continue;
                }
            },
        };
        layers.push(Layer::single(ENV_LAYER, name, keys, value));
        if OTEL_ENDPOINT_VARS.contains(&name) {
            layers.push(Layer::single(
                ENV_LAYER,
                name,
                &["otlp", "enabled"],
                Value::from(true),
            ));
        }
    }
    layers
}

/// `OTEL_EXPORTER_OTLP_HEADERS`: comma-separated `key=value` pairs, values percent-encoded.
/// Names are lower-cased (HTTP and gRPC names are case-insensitive).
pub(crate) fn parse_otel_headers(raw: &str) -> Result<Dict, String> {
    const ALLOWED: &str = "expected comma-separated key=value pairs with percent-encoded values, \
                           such as \"x-tenant=desk-1,authorization=Bearer%20abc\"";
    let mut dict = Dict::new();
    for item in raw.split(',').map(str::trim).filter(|i| !i.is_empty()) {
        let (name, value) = item
            .split_once('=')
            .ok_or_else(|| format!("`{item}` has no `=`; {ALLOWED}"))?;
        let name = name.trim();
        if name.is_empty() {
            return Err(format!("`{item}` has no name; {ALLOWED}"));
        }
        let value = percent_encoding::percent_decode_str(value.trim())
            .decode_utf8()
            .map_err(|_| format!("the value of `{name}` is not UTF-8 once decoded; {ALLOWED}"))?;
        dict.insert(name.to_ascii_lowercase(), Value::from(value.into_owned()));
    }
    Ok(dict)
}

fn env_layers(env: &BTreeMap<String, String>, errors: &mut Vec<ConfigError>) -> Vec<Layer> {
    let mut layers = Vec::new();
    // Sorted by name, so `FIX_MONITOR_POLL` comes before (and is refined by)
    // `FIX_MONITOR_POLL__INTERVAL`.
    for (name, raw) in env {
        let Some(rest) = name.strip_prefix(ENV_PREFIX) else {
            continue;
        };
        if name == ENV_CONFIG || raw.is_empty() {
            continue;
        }
        let keys: Vec<String> = rest.split("__").map(str::to_ascii_lowercase).collect();
        if keys.iter().any(String::is_empty) {
            errors.push(
                ConfigError::new(
                    ErrorKind::UnknownKey,
                    name.clone(),
                    "not a configuration variable: after FIX_MONITOR_ comes a key path whose \
                     parts are joined by a double underscore, e.g. FIX_MONITOR_POLL__INTERVAL",
                )
                .value(super::raw::quote(raw))
                .origin(Origin::Env(name.clone())),
            );
            continue;
        }
        let keys: Vec<&str> = keys.iter().map(String::as_str).collect();
        let mut layer = Layer::single(ENV_LAYER, name, &keys, parse_value(raw));
        lowercase_headers(&mut layer.dict, Origin::Env(name.clone()), errors);
        layers.push(layer);
    }

    // An endpoint in the environment means "push there", unless the environment also says
    // whether to push.
    let given = |name: &str| env.get(name).is_some_and(|v| !v.is_empty());
    if given(ENV_OTLP_ENDPOINT) && !given(ENV_OTLP_ENABLED) && !given(ENV_OTLP) {
        layers.push(Layer::single(
            ENV_LAYER,
            ENV_OTLP_ENDPOINT,
            &["otlp", "enabled"],
            Value::from(true),
        ));
    }

    let ip = env.get(ENV_LEGACY_IP).filter(|v| !v.is_empty());
    let port = env.get(ENV_LEGACY_PORT).filter(|v| !v.is_empty());
    match (ip, port) {
        (Some(ip), _) if env.get(ENV_TARGETS).is_some_and(|v| !v.is_empty()) => {
            errors.push(
                ConfigError::new(
                    ErrorKind::Conflict,
                    ENV_LEGACY_IP,
                    "both DOWNSTREAM_IP and FIX_MONITOR_TARGETS define the targets; set only one \
                     (DOWNSTREAM_IP, with DOWNSTREAM_PORT, defines a single target)",
                )
                .value(super::raw::quote(ip))
                .origin(Origin::Env(ENV_LEGACY_IP.into())),
            );
        }
        (Some(ip), port) => {
            let mut target = Dict::new();
            let mut labels = BTreeMap::new();
            target.insert("address".into(), Value::from(ip.clone()));
            labels.insert("address", ENV_LEGACY_IP.to_owned());
            if let Some(port) = port {
                target.insert("port".into(), port_value(port));
                labels.insert("port", ENV_LEGACY_PORT.to_owned());
            }
            layers.push(Layer::target(ENV_LAYER, target, labels));
        }
        (None, Some(port)) => errors.push(
            ConfigError::new(
                ErrorKind::Conflict,
                ENV_LEGACY_PORT,
                "is the port of the target that DOWNSTREAM_IP defines, and DOWNSTREAM_IP is \
                 not set; set it too, or give the targets another way \
                 (--ip, FIX_MONITOR_TARGETS, [[targets]] in the config file)",
            )
            .value(super::raw::quote(port))
            .origin(Origin::Env(ENV_LEGACY_PORT.into())),
        ),
        (None, None) => {}
    }
    layers
}

fn flag_layers(args: &ConfigArgs, errors: &mut Vec<ConfigError>) -> Vec<Layer> {
    let mut layers = Vec::new();

    // The originals' flags that would silently mean something else here.
    if let Some(value) = &args.rejected_port {
        let mut error = ConfigError::new(
            ErrorKind::RejectedFlag,
            "--port",
            "not accepted, because the original tools used it for two different ports: use \
             --target-port PORT for the downstream's port, or --listen 127.0.0.1:PORT for the \
             HTTP (Prometheus) endpoint",
        );
        error.value = value.clone();
        errors.push(error);
    }
    if let Some(value) = &args.rejected_log_file {
        let mut error = ConfigError::new(
            ErrorKind::RejectedFlag,
            "--log-file",
            "not supported: fix-monitor logs to stderr only; redirect stderr (2>>FILE) or let \
             the service manager collect it, and pick the format with --log-format text|json",
        );
        error.value = value.clone();
        errors.push(error);
    }

    match &args.ip {
        Some(ip) => {
            let mut target = Dict::new();
            let mut labels = BTreeMap::new();
            target.insert("address".into(), Value::from(ip.clone()));
            labels.insert("address", "--ip".to_owned());
            if let Some(port) = &args.target_port {
                target.insert("port".into(), port_value(port));
                labels.insert("port", "--target-port".to_owned());
            }
            // The original monitor always had both bounds (5000 and 6000 by default); here a
            // range exists only if asked for, and a missing bound takes the original default.
            let (label, min, max) = match (&args.min_port, &args.max_port) {
                (None, None) => (None, None, None),
                (Some(min), Some(max)) => (
                    Some("--min-port and --max-port".to_owned()),
                    Some(min),
                    Some(max),
                ),
                (Some(min), None) => (
                    Some(format!(
                        "--min-port, with --max-port defaulting to {}",
                        defaults::MAX_PORT
                    )),
                    Some(min),
                    None,
                ),
                (None, Some(max)) => (
                    Some(format!(
                        "--max-port, with --min-port defaulting to {}",
                        defaults::MIN_PORT
                    )),
                    None,
                    Some(max),
                ),
            };
            if let Some(label) = label {
                let bound = |raw: Option<&String>, default: u16| match raw {
                    Some(raw) => port_value(raw),
                    None => Value::from(default),
                };
                let range = vec![
                    bound(min, defaults::MIN_PORT),
                    bound(max, defaults::MAX_PORT),
                ];
                target.insert("local_ports".into(), Value::from(range));
                labels.insert("local_ports", label);
            }
            layers.push(Layer::target(FLAG_LAYER, target, labels));
        }
        None => {
            let narrowing = [
                ("--target-port", &args.target_port, "port"),
                ("--min-port", &args.min_port, "local_ports"),
                ("--max-port", &args.max_port, "local_ports"),
            ];
            for (flag, value, key) in narrowing {
                if let Some(value) = value {
                    errors.push(
                        ConfigError::new(
                            ErrorKind::Conflict,
                            flag,
                            format!(
                                "narrows the target that --ip defines, and there is no --ip: \
                                 give --ip ADDR too, or set `{key}` in the config file's \
                                 [[targets]]"
                            ),
                        )
                        .value(value.clone()),
                    );
                }
            }
        }
    }

    let settings = [
        ("--interval", &args.interval, ["poll", "interval"]),
        ("--source", &args.source, ["poll", "source"]),
        ("--state-dir", &args.state_dir, ["state", "dir"]),
        ("--listen", &args.listen, ["prometheus", "listen"]),
        (
            "--web.config.file",
            &args.web_config_file,
            ["prometheus", "web_config"],
        ),
        ("--log-format", &args.log_format, ["log", "format"]),
        ("--log-level", &args.log_level, ["log", "level"]),
        ("--otlp-endpoint", &args.otlp_endpoint, ["otlp", "endpoint"]),
        ("--otlp-protocol", &args.otlp_protocol, ["otlp", "protocol"]),
    ];
    for (flag, raw, keys) in settings {
        if let Some(raw) = raw {
            layers.push(Layer::single(FLAG_LAYER, flag, &keys, parse_value(raw)));
        }
    }
    // There is no flag for `enabled`: giving the endpoint is how to turn push on from the
    // command line.
    if args.otlp_endpoint.is_some() {
        layers.push(Layer::single(
            FLAG_LAYER,
            "--otlp-endpoint",
            &["otlp", "enabled"],
            Value::from(true),
        ));
    }
    layers
}
