//! From raw inputs (file text, environment variables, flags) to one figment, without I/O.
//!
//! Every variable and every flag becomes its own figment provider, whose [`Metadata`] names it
//! (through figment's interpolater). Figment tags each value with the provider it came from, so
//! after merging, the tag of any value (even one deep inside a `FIX_MONITOR_TARGETS` list)
//! leads back to the exact variable or flag; [`origin_of`] turns that into an [`Origin`].
//! (figment's own `Env` provider reads the process environment and tags all its values alike;
//! `load_from` takes the environment as data, and an error must name the one variable.)
//!
//! Lowest first: the standard `OTEL_*` variables ([`otel_vars`]), the file, the `FIX_MONITOR_*`
//! and legacy variables, the flags.

use std::collections::BTreeMap;
use std::path::Path;

use figment::providers::{Format, Toml};
use figment::util::nest;
use figment::value::{Dict, Map, Tag, Value};
use figment::{Figment, Metadata, Profile, Provider, Source};

use super::defaults::{MAX_PORT, MIN_PORT};
use super::error::{ConfigError, ErrorKind::*, Origin};
use super::raw::quote;
use super::ConfigArgs;

pub(crate) const ENV_PREFIX: &str = "FIX_MONITOR_";
/// Names the config file; read by `load_from`, not a key of the schema.
pub(crate) const ENV_CONFIG: &str = "FIX_MONITOR_CONFIG";
const ENV_TARGETS: &str = "FIX_MONITOR_TARGETS";
/// The original exporter's variables.
const ENV_LEGACY_IP: &str = "DOWNSTREAM_IP";
const ENV_LEGACY_PORT: &str = "DOWNSTREAM_PORT";
/// The signal-specific endpoint is the full URL, used as is (`raw::otlp` looks for this origin).
pub(crate) const ENV_OTEL_METRICS_ENDPOINT: &str = "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT";
/// Read by the SDK's resource detectors, not by the configuration; kept only so that
/// `fix-monitor config` can show them.
pub(crate) const RESOURCE_VARS: &[&str] = &["OTEL_RESOURCE_ATTRIBUTES", "OTEL_SERVICE_NAME"];

/// The standard variables fix-monitor honours, below its own layers, and the key each sets.
/// In this order: a signal-specific `OTEL_EXPORTER_OTLP_METRICS_*` comes after, and so beats,
/// its generic `OTEL_EXPORTER_OTLP_*`. How a value is read depends on its key ([`otel_layers`]).
fn otel_vars() -> impl Iterator<Item = (String, &'static str)> {
    let both = [
        ("ENDPOINT", "otlp.endpoint"),
        ("PROTOCOL", "otlp.protocol"),
        ("HEADERS", "otlp.headers"),
        ("TIMEOUT", "otlp.timeout"),
        ("CERTIFICATE", "otlp.tls.ca_file"),
        ("CLIENT_CERTIFICATE", "otlp.tls.cert_file"),
        ("CLIENT_KEY", "otlp.tls.key_file"),
    ];
    let one = [
        ("OTEL_METRIC_EXPORT_INTERVAL", "otlp.interval"),
        (
            "OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE",
            "otlp.temporality",
        ),
    ];
    let both = both.into_iter().flat_map(|(name, key)| {
        ["", "METRICS_"].map(|signal| (format!("OTEL_EXPORTER_OTLP_{signal}{name}"), key))
    });
    both.chain(one.map(|(name, key)| (name.to_owned(), key)))
}

// Provider names; `origin_of` maps them back to `Origin` variants.
const ENV_LAYER: &str = "environment variable";
const FLAG_LAYER: &str = "command-line flag";

/// Is this an environment variable the configuration reads?
pub(crate) fn is_ours(name: &str) -> bool {
    name.starts_with(ENV_PREFIX)
        || [ENV_LEGACY_IP, ENV_LEGACY_PORT].contains(&name)
        || RESOURCE_VARS.contains(&name)
        || otel_vars().any(|(var, _)| var == name)
}

/// Parses the config file's text into a (still untyped) tree.
pub(crate) fn parse_toml(path: &Path, text: &str) -> Result<Dict, ConfigError> {
    let data = Toml::string(text).data().map_err(|e| {
        let message = format!("not valid TOML: {e}");
        ConfigError::new(File, path.display().to_string(), message)
    })?;
    Ok(data.into_values().next().unwrap_or_default())
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
    /// `value` at the dotted `key`, from the variable or flag `label`.
    fn single(layer: &'static str, label: &str, key: &str, value: Value) -> Layer {
        Layer::labelled(layer, vec![("", label.to_owned())], nest(key, value))
    }

    /// A layer whose values come from several variables or flags: `labels` names the one
    /// behind each field (the last key of a value's path), the first one the rest.
    fn labelled(layer: &'static str, labels: Vec<(&'static str, String)>, value: Value) -> Layer {
        let interpolate = move |_: &Profile, keys: &[&str]| {
            let field = keys.last().copied().unwrap_or_default();
            let label = labels.iter().find(|(f, _)| *f == field);
            label.unwrap_or(&labels[0]).1.clone()
        };
        Layer::new(Metadata::named(layer).interpolater(interpolate), value)
    }

    /// `value`, a table, from `metadata`'s provider.
    fn new(metadata: Metadata, value: Value) -> Layer {
        let dict = value.into_dict().expect("a nested key is a table");
        Layer { metadata, dict }
    }

    /// The one target of the original tools, each field from its own variable or flag.
    fn target(layer: &'static str, fields: Vec<(&'static str, String, Value)>) -> Layer {
        let fields = fields
            .into_iter()
            .map(|(f, label, v)| ((f, label), (f.to_owned(), v)));
        let (labels, target): (_, Dict) = fields.unzip();
        let targets = Value::from(vec![Value::from(target)]);
        Layer::labelled(layer, labels, nest("targets", targets))
    }

    fn sets(&self, key: &str) -> bool {
        Value::from(self.dict.clone()).find_ref(key).is_some()
    }
}

/// A variable's or flag's text as a value: a `[..]` list or `{..}` table is parsed (figment's
/// syntax, as `FIX_MONITOR_TARGETS` uses), anything else stays text, which the key's check
/// reads (so `5` is a number of seconds to `poll.interval` and a string to `log.level`).
fn parse_value(raw: &str) -> Value {
    match raw.trim_start().starts_with(['[', '{']) {
        true => raw.parse().unwrap_or_else(|never| match never {}),
        false => Value::from(raw.to_owned()),
    }
}

/// A port from a variable or flag: a number when it reads as one, so that errors show it as
/// the file would (`[7000, 6000]`); else the text, for the check to reject.
fn port_value(raw: &str) -> Value {
    let port = raw.trim().parse::<i64>();
    port.map_or_else(|_| Value::from(raw.to_owned()), Value::from)
}

/// Where the value with `tag` came from; `field` is the last key of its path (legacy target
/// layers name a different variable or flag per field).
pub(crate) fn origin_of(figment: &Figment, tag: Tag, field: &str) -> Origin {
    (figment.get_metadata(tag)).map_or(Origin::Default, |m| origin(m, field))
}

fn origin(metadata: &Metadata, field: &str) -> Origin {
    let label = || metadata.interpolate(&Profile::Default, &[field]);
    match (&metadata.source, &*metadata.name) {
        (Some(Source::File(path)), _) => Origin::File(path.clone()),
        (_, ENV_LAYER) => Origin::Env(label()),
        (_, FLAG_LAYER) => Origin::Flag(label()),
        _ => Origin::Default,
    }
}

/// Merges the standard variables, file, environment and flags, in that order, into one
/// figment. Problems that are visible before merging (malformed variable names, flags that need
/// `--ip`, rejected flags) go to `errors`.
pub(crate) fn build(
    file: Option<(&Path, Dict)>,
    env: &BTreeMap<String, String>,
    args: &ConfigArgs,
    errors: &mut Vec<ConfigError>,
) -> Figment {
    let file = file.map(|(path, dict)| {
        let metadata = Metadata::from("config file", Source::File(path.to_path_buf()));
        vec![Layer { metadata, dict }]
    });
    let groups = [
        otel_layers(env, errors),
        file.unwrap_or_default(),
        env_layers(env, errors),
        flag_layers(args, errors),
    ];
    let mut figment = Figment::new();
    for mut group in groups {
        endpoint_implies_enabled(&mut group);
        for mut layer in group {
            lowercase_headers(&mut layer, errors);
            figment = figment.merge(layer);
        }
    }
    figment
}

/// An OTLP endpoint means "push there", unless the same layer (the file, the environment, the
/// flags: there is no flag for `enabled`) also says whether to push.
fn endpoint_implies_enabled(group: &mut Vec<Layer>) {
    if group.iter().any(|l| l.sets("otlp.enabled")) {
        return;
    }
    if let Some(layer) = group.iter().rev().find(|l| l.sets("otlp.endpoint")) {
        let enabled = nest("otlp.enabled", true.into());
        group.push(Layer::new(layer.metadata.clone(), enabled));
    }
}

/// Header names are case-insensitive: lower-cased in every layer before merging, so that a
/// higher layer's `x-tenant` replaces a lower one's `X-Tenant` rather than adding a second.
fn lowercase_headers(layer: &mut Layer, errors: &mut Vec<ConfigError>) {
    let origin = origin(&layer.metadata, "headers");
    let path = ["otlp", "headers"].map(String::from);
    let Some(Value::Dict(_, headers)) = super::raw::at(&mut layer.dict, &path) else {
        return;
    };
    for (name, value) in std::mem::take(headers) {
        let lower = name.to_ascii_lowercase();
        if let std::collections::btree_map::Entry::Vacant(entry) = headers.entry(lower.clone()) {
            entry.insert(value);
            continue;
        }
        let message = format!(
            "names the same header as another entry (header names are case-insensitive: \
             `{lower}`); keep one"
        );
        let error = ConfigError::new(Conflict, format!("otlp.headers.{name}"), message);
        let value = super::raw::render(&value);
        errors.push(error.value(value).origin(origin.clone()));
    }
}

/// The standard OpenTelemetry variables, one layer each, in [`otel_vars`] order.
fn otel_layers(env: &BTreeMap<String, String>, errors: &mut Vec<ConfigError>) -> Vec<Layer> {
    let mut layers = Vec::new();
    let set = otel_vars().filter_map(|(name, key)| Some((env.get(&name)?.trim(), name, key)));
    for (raw, name, key) in set.filter(|(raw, ..)| !raw.is_empty()) {
        let value = match (key, raw.parse::<u64>()) {
            // Durations are integer milliseconds, as the specification has it; kept as "5000ms"
            // so that our duration parser (where a bare integer means seconds) reads them right.
            ("otlp.timeout" | "otlp.interval", Ok(ms)) => Value::from(format!("{ms}ms")),
            // `key=value,key=value` with percent-encoded values (the W3C baggage format).
            ("otlp.headers", _) => match parse_otel_headers(raw) {
                Ok(dict) => Value::from(dict),
                Err(message) => {
                    let error = ConfigError::new(InvalidValue, key, message);
                    errors.push(error.value(quote(raw)).origin(Origin::Env(name)));
                    continue;
                }
            },
            // Taken whole, as a string. A duration such as "5s" is not what the specification
            // allows, but clear enough: the duration parser judges it, naming this variable.
            _ => Value::from(raw.to_owned()),
        };
        layers.push(Layer::single(ENV_LAYER, &name, key, value));
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

const NOT_A_VARIABLE: &str = "not a configuration variable: after FIX_MONITOR_ comes a key path \
     whose parts are joined by a double underscore, e.g. FIX_MONITOR_POLL__INTERVAL";
const LEGACY_BOTH: &str = "both DOWNSTREAM_IP and FIX_MONITOR_TARGETS define the targets; set \
     only one (DOWNSTREAM_IP, with DOWNSTREAM_PORT, defines a single target)";
const LEGACY_PORT_ALONE: &str = "is the port of the target that DOWNSTREAM_IP defines, and \
     DOWNSTREAM_IP is not set; set it too, or give the targets another way \
     (--ip, FIX_MONITOR_TARGETS, [[targets]] in the config file)";

fn env_layers(env: &BTreeMap<String, String>, errors: &mut Vec<ConfigError>) -> Vec<Layer> {
    let mut layers = Vec::new();
    let mut error = |kind, name: &str, message, value: &str| {
        let error = ConfigError::new(kind, name, message).value(quote(value));
        errors.push(error.origin(Origin::Env(name.to_owned())));
    };
    // Sorted by name, so `FIX_MONITOR_POLL` comes before (and is refined by)
    // `FIX_MONITOR_POLL__INTERVAL`.
    let vars = env.iter().filter(|(name, _)| *name != ENV_CONFIG);
    let vars = vars.filter_map(|(name, raw)| Some((name, name.strip_prefix(ENV_PREFIX)?, raw)));
    for (name, rest, raw) in vars {
        let keys: Vec<String> = rest.split("__").map(str::to_ascii_lowercase).collect();
        if keys.iter().any(String::is_empty) {
            error(UnknownKey, name, NOT_A_VARIABLE, raw);
            continue;
        }
        // Nested by hand, not by figment's dotted keys: a header name may hold a dot.
        let nested = |value, key: &String| Value::from(Dict::from([(key.clone(), value)]));
        let value = keys.iter().rev().fold(parse_value(raw), nested);
        layers.push(Layer::labelled(ENV_LAYER, vec![("", name.clone())], value));
    }

    // `env` holds no empty values (an empty variable counts as unset).
    match (env.get(ENV_LEGACY_IP), env.get(ENV_LEGACY_PORT)) {
        (Some(ip), _) if env.contains_key(ENV_TARGETS) => {
            error(Conflict, ENV_LEGACY_IP, LEGACY_BOTH, ip)
        }
        (Some(ip), port) => {
            let mut target = vec![("address", ENV_LEGACY_IP.into(), Value::from(ip.clone()))];
            if let Some(port) = port {
                target.push(("port", ENV_LEGACY_PORT.into(), port_value(port)));
            }
            layers.push(Layer::target(ENV_LAYER, target));
        }
        (None, Some(port)) => error(Conflict, ENV_LEGACY_PORT, LEGACY_PORT_ALONE, port),
        (None, None) => {}
    }
    layers
}

const REJECTED_PORT: &str = "not accepted, because the original tools used it for two different \
     ports: use --target-port PORT for the downstream's port, or --listen 127.0.0.1:PORT for \
     the HTTP (Prometheus) endpoint";
const REJECTED_LOG_FILE: &str = "not supported: fix-monitor logs to stderr only; redirect stderr \
     (2>>FILE) or let the service manager collect it, and pick the format with --log-format \
     text|json";

fn flag_layers(args: &ConfigArgs, errors: &mut Vec<ConfigError>) -> Vec<Layer> {
    // The originals' flags that would silently mean something else here.
    let rejected = [
        ("--port", &args.rejected_port, REJECTED_PORT),
        ("--log-file", &args.rejected_log_file, REJECTED_LOG_FILE),
    ];
    for (flag, value, message) in rejected {
        let Some(value) = value else { continue };
        let mut error = ConfigError::new(RejectedFlag, flag, message);
        error.value.clone_from(value);
        errors.push(error);
    }

    let mut layers = Vec::new();
    if let Some(ip) = &args.ip {
        layers.push(Layer::target(FLAG_LAYER, ip_target(ip, args)));
    } else {
        let narrowing = [
            ("--target-port", &args.target_port, "port"),
            ("--min-port", &args.min_port, "local_ports"),
            ("--max-port", &args.max_port, "local_ports"),
        ];
        for (flag, value, key) in narrowing {
            let Some(value) = value else { continue };
            let message = format!(
                "narrows the target that --ip defines, and there is no --ip: give --ip ADDR \
                 too, or set `{key}` in the config file's [[targets]]"
            );
            errors.push(ConfigError::new(Conflict, flag, message).value(value));
        }
    }

    let web_config = &args.web_config_file;
    let settings = [
        ("--interval", &args.interval, "poll.interval"),
        ("--source", &args.source, "poll.source"),
        ("--state-dir", &args.state_dir, "state.dir"),
        ("--listen", &args.listen, "prometheus.listen"),
        ("--web.config.file", web_config, "prometheus.web_config"),
        ("--log-format", &args.log_format, "log.format"),
        ("--log-level", &args.log_level, "log.level"),
        ("--otlp-endpoint", &args.otlp_endpoint, "otlp.endpoint"),
        ("--otlp-protocol", &args.otlp_protocol, "otlp.protocol"),
    ];
    for (flag, raw, key) in settings {
        if let Some(raw) = raw {
            layers.push(Layer::single(FLAG_LAYER, flag, key, parse_value(raw)));
        }
    }
    layers
}

/// The target `--ip` defines, narrowed by `--target-port`, `--min-port` and `--max-port`.
fn ip_target(ip: &str, args: &ConfigArgs) -> Vec<(&'static str, String, Value)> {
    let mut target = vec![("address", "--ip".to_owned(), Value::from(ip.to_owned()))];
    if let Some(port) = &args.target_port {
        target.push(("port", "--target-port".to_owned(), port_value(port)));
    }
    // The original monitor always had both bounds (5000 and 6000 by default); here a range
    // exists only if asked for, and a missing bound takes the original default.
    let (min, max) = (&args.min_port, &args.max_port);
    let label = match (min, max) {
        (None, None) => return target,
        (Some(_), Some(_)) => "--min-port and --max-port".to_owned(),
        (Some(_), None) => format!("--min-port, with --max-port defaulting to {MAX_PORT}"),
        (None, Some(_)) => format!("--max-port, with --min-port defaulting to {MIN_PORT}"),
    };
    let bound =
        |raw: &Option<String>, default: u16| raw.as_deref().map_or(default.into(), port_value);
    let range = vec![bound(min, MIN_PORT), bound(max, MAX_PORT)];
    target.push(("local_ports", label, Value::from(range)));
    target
}
