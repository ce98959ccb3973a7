//! From raw inputs (file text, environment variables, flags) to one figment, without I/O.
//!
//! Every variable and every flag becomes its own figment provider. Figment tags each value with
//! the provider it came from, so after merging, the tag of any value (even one deep inside a
//! `FIX_MONITOR_TARGETS` list) leads back to the exact variable or flag; [`origin_of`] turns
//! that into an [`Origin`].

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

// Provider names; `origin_of` maps them back to `Origin` variants.
const ENV_LAYER: &str = "environment variable";
const FLAG_LAYER: &str = "command-line flag";
const FILE_LAYER: &str = "config file";

/// Keys whose values are strings whatever they look like: figment's value parser would cut
/// `info,fix_monitor=debug` at the comma or read `1e3` as a number.
const STRING_KEYS: &[&[&str]] = &[
    &["poll", "source"],
    &["prometheus", "listen"],
    &["log", "format"],
    &["log", "level"],
];

/// Is this an environment variable the configuration reads?
pub(crate) fn is_ours(name: &str) -> bool {
    name.starts_with(ENV_PREFIX) || name == ENV_LEGACY_IP || name == ENV_LEGACY_PORT
}

/// Parses TOML text into a (still untyped) tree.
pub(crate) fn parse_toml(text: &str) -> Result<Dict, String> {
    Toml::string(text)
        .data()
        .map(|mut profiles| profiles.remove(&Profile::Default).unwrap_or_default())
        .map_err(|e| e.to_string())
}

/// One provider's worth of values, and the metadata figment tags them with.
struct Layer {
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

/// A variable's or flag's text as a value: strings for string keys, else figment's parse
/// (numbers, booleans, arrays, tables), which is what lets `--interval 5` mean seconds.
fn parse_value<K: AsRef<str>>(keys: &[K], raw: &str) -> Value {
    let is_string = STRING_KEYS.iter().any(|path| {
        path.len() == keys.len() && path.iter().zip(keys).all(|(a, b)| *a == b.as_ref())
    });
    if is_string {
        Value::from(raw.to_owned())
    } else {
        match raw.parse::<Value>() {
            Ok(value) => value,
            Err(never) => match never {},
        }
    }
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
    if let Some((path, dict)) = file {
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
                .value(super::resolve::quote(raw))
                .origin(Origin::Env(name.clone())),
            );
            continue;
        }
        let keys: Vec<&str> = keys.iter().map(String::as_str).collect();
        layers.push(Layer::single(
            ENV_LAYER,
            name,
            &keys,
            parse_value(&keys, raw),
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
                .value(super::resolve::quote(ip))
                .origin(Origin::Env(ENV_LEGACY_IP.into())),
            );
        }
        (Some(ip), port) => {
            let mut target = Dict::new();
            let mut labels = BTreeMap::new();
            target.insert("address".into(), Value::from(ip.clone()));
            labels.insert("address", ENV_LEGACY_IP.to_owned());
            if let Some(port) = port {
                target.insert("port".into(), parse_value(&["port"], port));
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
            .value(super::resolve::quote(port))
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
                target.insert("port".into(), parse_value(&["port"], port));
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
                    Some(raw) => parse_value(&["local_ports"], raw),
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
        ("--listen", &args.listen, ["prometheus", "listen"]),
        ("--log-format", &args.log_format, ["log", "format"]),
        ("--log-level", &args.log_level, ["log", "level"]),
    ];
    for (flag, raw, keys) in settings {
        if let Some(raw) = raw {
            layers.push(Layer::single(
                FLAG_LAYER,
                flag,
                &keys,
                parse_value(&keys, raw),
            ));
        }
    }
    layers
}
