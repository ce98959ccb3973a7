//! From the merged, untyped tree to [`Settings`] (ripgrep's "high-level args"): every key is
//! checked against the schema, every value parsed, and *every* problem recorded before giving
//! up, each naming the key, the value, its origin and what is allowed. Pure.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::time::Duration;

use figment::value::{Dict, Num, Value};
use figment::{Figment, Provider};
use ipnet::IpNet;

use super::error::{ConfigError, ErrorKind, Origin};
use super::layers::{self, ENV_PREFIX};
use super::{defaults, LogFormat, LogSettings, PollSettings, PrometheusSettings, Settings};
use crate::source::SourceKind;
use crate::target::{PortRange, Target, Targets};

/// Top-level keys. An `[otlp]` section will be added here (and resolved like `[prometheus]`).
const TOP_KEYS: &[&str] = &["targets", "poll", "prometheus", "log"];
const TARGET_KEYS: &[&str] = &["name", "address", "port", "local_ports"];
const POLL_KEYS: &[&str] = &["interval", "source"];
const PROMETHEUS_KEYS: &[&str] = &["enabled", "listen"];
const LOG_KEYS: &[&str] = &["format", "level"];

const ALLOWED_ADDRESS: &str =
    "expected an IP address or CIDR block, such as \"10.0.0.5\", \"10.0.0.0/24\" or \"fd00::5\"";
const ALLOWED_PORT: &str = "expected a port number from 1 to 65535";
const ALLOWED_RANGE: &str =
    "expected [start, end], two port numbers with 1 <= start <= end <= 65535";
const ALLOWED_INTERVAL: &str = "expected a duration above zero and at most 24h: whole seconds \
                                (5) or a humantime string (\"500ms\", \"2s\", \"1m 30s\")";
const ALLOWED_LISTEN: &str = "expected IP:PORT, such as \"127.0.0.1:9464\", \"0.0.0.0:9464\" or \
                              \"[::]:9464\" (host names are not resolved)";
const ALLOWED_LEVEL: &str =
    "expected a tracing filter directive, such as \"info\", \"debug\" or \"warn,fix_monitor=debug\"";

/// What the resolver needs to know beyond the merged values.
pub(crate) struct Context<'a> {
    /// The configuration file that was (or would have been) read, for the "no targets" hint.
    pub config_path: &'a Path,
    /// The file could not be read or parsed.
    pub file_failed: bool,
}

/// Resolves the merged values. Always returns settings (defaults stand in for bad values) and
/// the origin of each; the caller uses them only if `errors` stayed empty.
pub(crate) fn resolve(
    figment: &Figment,
    context: &Context<'_>,
    errors: &mut Vec<ConfigError>,
) -> (Settings, BTreeMap<String, Origin>) {
    let root = match figment.data() {
        Ok(mut profiles) => profiles
            .remove(&figment::Profile::Default)
            .unwrap_or_default(),
        Err(e) => {
            // Our providers cannot fail; keep going so other problems are still reported.
            errors.push(ConfigError::new(
                ErrorKind::File,
                "configuration",
                e.to_string(),
            ));
            Dict::new()
        }
    };
    let mut r = Resolver {
        figment,
        errors,
        origins: BTreeMap::new(),
    };
    r.unknown_keys("", &root, TOP_KEYS, "the top level");

    let targets = r.targets(&root, context);

    let poll = r.table(&root, "poll", POLL_KEYS);
    let interval = r.setting(poll, "poll", "interval", defaults::INTERVAL, parse_interval);
    let source = r.setting(poll, "poll", "source", defaults::SOURCE, parse_source);

    let prometheus = r.table(&root, "prometheus", PROMETHEUS_KEYS);
    let enabled = r.setting(
        prometheus,
        "prometheus",
        "enabled",
        defaults::PROMETHEUS_ENABLED,
        parse_bool,
    );
    let listen = r.setting(
        prometheus,
        "prometheus",
        "listen",
        defaults::PROMETHEUS_LISTEN,
        parse_listen,
    );

    let log = r.table(&root, "log", LOG_KEYS);
    let format = r.setting(log, "log", "format", defaults::LOG_FORMAT, parse_log_format);
    let level = r.setting(
        log,
        "log",
        "level",
        defaults::LOG_LEVEL.to_owned(),
        parse_log_level,
    );

    // [otlp]: resolve its table here, like [prometheus] above.

    let settings = Settings {
        targets,
        poll: PollSettings { interval, source },
        prometheus: PrometheusSettings { enabled, listen },
        log: LogSettings { format, level },
    };
    (settings, r.origins)
}

struct Resolver<'a> {
    figment: &'a Figment,
    errors: &'a mut Vec<ConfigError>,
    origins: BTreeMap<String, Origin>,
}

impl Resolver<'_> {
    fn origin(&self, value: &Value, field: &str) -> Origin {
        layers::origin_of(self.figment, value.tag(), field)
    }

    fn error(&mut self, kind: ErrorKind, key: &str, value: &Value, field: &str, message: String) {
        let origin = self.origin(value, field);
        self.errors.push(
            ConfigError::new(kind, key, message)
                .value(render_short(value))
                .origin(origin),
        );
    }

    /// Reports each key of `dict` that `known` lacks. `path` is the dict's own key path.
    fn unknown_keys(&mut self, path: &str, dict: &Dict, known: &[&str], what: &str) {
        for (key, value) in dict {
            if known.contains(&key.as_str()) {
                continue;
            }
            let mut message = format!("unknown key; {what} accepts: {}", known.join(", "));
            // `FIX_MONITOR_POLL_INTERVAL` (one underscore) is the likely slip.
            if matches!(self.origin(value, key), Origin::Env(_)) {
                if let Some(hint) = nesting_hint(path, key) {
                    message = format!(
                        "{message} (sections nest with a double underscore: did you mean {hint}?)"
                    );
                }
            }
            self.error(ErrorKind::UnknownKey, &join(path, key), value, key, message);
        }
    }

    /// The table `name` of the root, with its unknown keys reported; `None` if absent or not a
    /// table (the latter reported).
    fn table<'v>(&mut self, root: &'v Dict, name: &str, known: &[&str]) -> Option<&'v Dict> {
        match root.get(name)? {
            Value::Dict(_, dict) => {
                self.unknown_keys(name, dict, known, &format!("[{name}]"));
                Some(dict)
            }
            other => {
                let message = format!("expected a table with the keys {}", known.join(", "));
                self.error(ErrorKind::InvalidValue, name, other, name, message);
                None
            }
        }
    }

    /// One setting: parsed from `table[field]` with its origin recorded, or the default.
    fn setting<T>(
        &mut self,
        table: Option<&Dict>,
        section: &str,
        field: &str,
        default: T,
        parse: impl FnOnce(&Value) -> Result<T, String>,
    ) -> T {
        let key = join(section, field);
        match table.and_then(|t| t.get(field)) {
            None => {
                self.origins.insert(key, Origin::Default);
                default
            }
            Some(value) => self.parse(&key, field, value, parse).unwrap_or(default),
        }
    }

    fn parse<T>(
        &mut self,
        key: &str,
        field: &str,
        value: &Value,
        parse: impl FnOnce(&Value) -> Result<T, String>,
    ) -> Option<T> {
        match parse(value) {
            Ok(parsed) => {
                let origin = self.origin(value, field);
                self.origins.insert(key.to_owned(), origin);
                Some(parsed)
            }
            Err(message) => {
                self.error(ErrorKind::InvalidValue, key, value, field, message);
                None
            }
        }
    }

    fn targets(&mut self, root: &Dict, context: &Context<'_>) -> Targets {
        let items = match root.get("targets") {
            None => {
                if !context.file_failed {
                    self.errors.push(no_targets(context));
                }
                return Targets::default();
            }
            Some(Value::Array(_, items)) => items,
            Some(other) => {
                let message = "expected a list of targets: [[targets]] tables in the file, or \
                               FIX_MONITOR_TARGETS='[{address=\"10.0.0.5\", port=9876}]'"
                    .to_owned();
                self.error(
                    ErrorKind::InvalidValue,
                    "targets",
                    other,
                    "targets",
                    message,
                );
                return Targets::default();
            }
        };
        if items.is_empty() {
            let origin = self.origin(&root["targets"], "targets");
            self.errors
                .push(no_targets(context).value("[]").origin(origin));
        }

        let mut targets = Vec::new();
        // (index in the configuration, name) of each target, to report duplicates.
        let mut names: BTreeMap<String, usize> = BTreeMap::new();
        for (i, item) in items.iter().enumerate() {
            let path = format!("targets[{i}]");
            let Some(target) = self.target(&path, item) else {
                continue;
            };
            let name_key = format!("{path}.name");
            if let Some(&first) = names.get(&target.name) {
                let derived = matches!(self.origins.get(&name_key), Some(Origin::Default));
                let message = format!(
                    "this name is already used by targets[{first}]; names must be unique, as \
                     they label the metrics{}",
                    if derived {
                        " (this one is the default name, from address and port: give one of \
                         the two targets a `name`)"
                    } else {
                        ""
                    }
                );
                let mut error =
                    ConfigError::new(ErrorKind::DuplicateName, name_key.clone(), message)
                        .value(quote(&target.name));
                error.origin = self.origins.get(&name_key).cloned();
                self.errors.push(error);
            } else {
                names.insert(target.name.clone(), i);
            }
            targets.push(target);
        }
        Targets::new(targets)
    }

    /// One `[[targets]]` entry; `None` if anything about it is wrong (reported).
    fn target(&mut self, path: &str, item: &Value) -> Option<Target> {
        let Value::Dict(_, dict) = item else {
            let message = "expected a table with `address` and optionally `name`, `port`, \
                           `local_ports`"
                .to_owned();
            self.error(ErrorKind::InvalidValue, path, item, "targets", message);
            return None;
        };
        let errors_before = self.errors.len();
        self.unknown_keys(path, dict, TARGET_KEYS, "a target");

        let key = |field: &str| format!("{path}.{field}");
        let net = match dict.get("address") {
            Some(value) => self.parse(&key("address"), "address", value, parse_address),
            None => {
                let origin = self.origin(item, "address");
                self.errors.push(
                    ConfigError::new(
                        ErrorKind::MissingValue,
                        key("address"),
                        format!("missing; every target needs an address: {ALLOWED_ADDRESS}"),
                    )
                    .origin(origin),
                );
                None
            }
        };
        let port = self.optional(dict, &key("port"), "port", parse_port);
        let local_ports = self.optional(dict, &key("local_ports"), "local_ports", parse_range);
        let name = self.optional(dict, &key("name"), "name", parse_name);

        if self.errors.len() > errors_before {
            return None;
        }
        let (net, port, local_ports, name) = (net?, port?, local_ports?, name?);
        let name = name.unwrap_or_else(|| Target::default_name(&net, port));
        Some(Target {
            name,
            net,
            port,
            local_ports,
        })
    }

    /// An optional field: `Some(None)` when absent (origin: default), `None` when invalid.
    fn optional<T>(
        &mut self,
        dict: &Dict,
        key: &str,
        field: &str,
        parse: impl FnOnce(&Value) -> Result<T, String>,
    ) -> Option<Option<T>> {
        match dict.get(field) {
            None => {
                self.origins.insert(key.to_owned(), Origin::Default);
                Some(None)
            }
            Some(value) => self.parse(key, field, value, parse).map(Some),
        }
    }
}

fn no_targets(context: &Context<'_>) -> ConfigError {
    ConfigError::new(
        ErrorKind::NoTargets,
        "targets",
        format!(
            "no targets to watch; give one with --ip ADDR [--target-port PORT], with \
             DOWNSTREAM_IP (and DOWNSTREAM_PORT) in the environment, or as [[targets]] in the \
             config file ({}) or FIX_MONITOR_TARGETS",
            context.config_path.display()
        ),
    )
}

/// For an unknown key that came from the environment: the variable that was probably meant,
/// when the key is a section name and a key of it joined by one underscore.
fn nesting_hint(path: &str, key: &str) -> Option<String> {
    if !path.is_empty() {
        return None;
    }
    let sections: [(&str, &[&str]); 3] = [
        ("poll", POLL_KEYS),
        ("prometheus", PROMETHEUS_KEYS),
        ("log", LOG_KEYS),
    ];
    sections.iter().find_map(|(section, keys)| {
        let rest = key.strip_prefix(section)?.strip_prefix('_')?;
        keys.contains(&rest).then(|| {
            format!(
                "{ENV_PREFIX}{}__{}",
                section.to_ascii_uppercase(),
                rest.to_ascii_uppercase()
            )
        })
    })
}

fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_owned()
    } else {
        format!("{path}.{key}")
    }
}

// ---- Parsers: one value in, a typed value or "what is wrong; what is allowed" out. ----

/// Any integer, whatever width figment stored it in; `None` for floats.
fn integer(value: &Value) -> Option<i128> {
    let Value::Num(_, num) = value else {
        return None;
    };
    Some(match *num {
        Num::U8(v) => v.into(),
        Num::U16(v) => v.into(),
        Num::U32(v) => v.into(),
        Num::U64(v) => v.into(),
        Num::U128(v) => i128::try_from(v).unwrap_or(i128::MAX),
        Num::USize(v) => i128::try_from(v).unwrap_or(i128::MAX),
        Num::I8(v) => v.into(),
        Num::I16(v) => v.into(),
        Num::I32(v) => v.into(),
        Num::I64(v) => v.into(),
        Num::I128(v) => v,
        Num::ISize(v) => i128::try_from(v).unwrap_or(i128::MAX),
        Num::F32(_) | Num::F64(_) => return None,
    })
}

fn string(value: &Value) -> Option<&str> {
    match value {
        Value::String(_, s) => Some(s),
        _ => None,
    }
}

pub(crate) fn parse_address(value: &Value) -> Result<IpNet, String> {
    let text = string(value).ok_or(ALLOWED_ADDRESS)?.trim();
    if text.contains('/') {
        let net: IpNet = text.parse().map_err(|_| ALLOWED_ADDRESS.to_owned())?;
        // 10.0.0.5/24 is either a typo for the block or for the host; make the user say which.
        if net.trunc() != net {
            return Err(format!(
                "has host bits set: write \"{}\" for the block, or \"{}\" for the single address",
                net.trunc(),
                net.addr()
            ));
        }
        return Ok(net);
    }
    let ip: IpAddr = text.parse().map_err(|_| ALLOWED_ADDRESS.to_owned())?;
    if let IpAddr::V6(v6) = ip {
        // Peers are compared in canonical form (IPv4-mapped -> IPv4), so a mapped target
        // would never match anything.
        if let Some(v4) = v6.to_ipv4_mapped() {
            return Err(format!(
                "is an IPv4-mapped IPv6 address: write \"{v4}\", which also matches dual-stack \
                 sockets"
            ));
        }
    }
    Ok(IpNet::from(ip))
}

pub(crate) fn parse_port(value: &Value) -> Result<u16, String> {
    match integer(value) {
        Some(0) => Err(format!(
            "0 is not a port; {ALLOWED_PORT} (leave `port` out to match any port)"
        )),
        Some(n) => u16::try_from(n)
            .ok()
            .filter(|_| n > 0)
            .ok_or_else(|| format!("out of range; {ALLOWED_PORT}")),
        None => Err(ALLOWED_PORT.to_owned()),
    }
}

pub(crate) fn parse_range(value: &Value) -> Result<PortRange, String> {
    let Value::Array(_, items) = value else {
        return Err(ALLOWED_RANGE.to_owned());
    };
    let [start, end] = items.as_slice() else {
        return Err(format!("has {} elements; {ALLOWED_RANGE}", items.len()));
    };
    let bound = |which: &str, v: &Value| {
        parse_port(v)
            .map_err(|_| format!("the {which} {} is not a port; {ALLOWED_RANGE}", render(v)))
    };
    let (start, end) = (bound("start", start)?, bound("end", end)?);
    if start > end {
        return Err(format!(
            "is inverted: start {start} is above end {end}; {ALLOWED_RANGE}"
        ));
    }
    Ok(PortRange { start, end })
}

pub(crate) fn parse_name(value: &Value) -> Result<String, String> {
    match string(value) {
        Some(name) if !name.trim().is_empty() => Ok(name.to_owned()),
        _ => Err("expected a non-empty string (it labels the target's metrics)".to_owned()),
    }
}

pub(crate) fn parse_interval(value: &Value) -> Result<Duration, String> {
    let interval = match value {
        Value::Num(..) => match integer(value) {
            Some(secs) if secs >= 0 => Duration::from_secs(u64::try_from(secs).unwrap_or(u64::MAX)),
            _ => return Err(ALLOWED_INTERVAL.to_owned()),
        },
        Value::String(_, text) => {
            let text = text.trim();
            if !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit()) {
                // "5", as the original --interval took it: seconds.
                let secs = text
                    .parse::<u64>()
                    .map_err(|_| ALLOWED_INTERVAL.to_owned())?;
                Duration::from_secs(secs)
            } else {
                humantime::parse_duration(text).map_err(|e| format!("{e}; {ALLOWED_INTERVAL}"))?
            }
        }
        _ => return Err(ALLOWED_INTERVAL.to_owned()),
    };
    if interval.is_zero() {
        return Err(format!("must be above zero; {ALLOWED_INTERVAL}"));
    }
    if interval > defaults::MAX_INTERVAL {
        return Err(format!("is too long; {ALLOWED_INTERVAL}"));
    }
    Ok(interval)
}

fn parse_source(value: &Value) -> Result<SourceKind, String> {
    let allowed = || format!("expected one of: {}", SourceKind::ALLOWED);
    let text = string(value).ok_or_else(allowed)?;
    [
        SourceKind::Auto,
        SourceKind::Netlink,
        SourceKind::Procfs,
        SourceKind::Netstat,
    ]
    .into_iter()
    .find(|kind| kind.as_str().eq_ignore_ascii_case(text.trim()))
    .ok_or_else(allowed)
}

fn parse_bool(value: &Value) -> Result<bool, String> {
    match value {
        Value::Bool(_, b) => Ok(*b),
        _ => Err("expected true or false".to_owned()),
    }
}

fn parse_listen(value: &Value) -> Result<SocketAddr, String> {
    let text = string(value).ok_or(ALLOWED_LISTEN)?;
    text.trim().parse().map_err(|_| ALLOWED_LISTEN.to_owned())
}

fn parse_log_format(value: &Value) -> Result<LogFormat, String> {
    let allowed = || format!("expected one of: {}", LogFormat::ALLOWED);
    let text = string(value).ok_or_else(allowed)?;
    [LogFormat::Text, LogFormat::Json]
        .into_iter()
        .find(|format| format.as_str().eq_ignore_ascii_case(text.trim()))
        .ok_or_else(allowed)
}

fn parse_log_level(value: &Value) -> Result<String, String> {
    let text = string(value).ok_or(ALLOWED_LEVEL)?.trim();
    if text.is_empty() {
        return Err(ALLOWED_LEVEL.to_owned());
    }
    // The binary builds its filter from this string; checking here turns a typo into a usage
    // error instead of a silent fallback.
    tracing_subscriber::EnvFilter::builder()
        .parse(text)
        .map_err(|e| format!("{e}; {ALLOWED_LEVEL}"))?;
    Ok(text.to_owned())
}

// ---- Rendering values in messages and in `explain`. ----

/// A TOML basic string. JSON's string escapes are a subset of TOML's.
pub(crate) fn quote(text: &str) -> String {
    serde_json::to_string(text).expect("a string always serializes")
}

/// A value as TOML-like text.
pub(crate) fn render(value: &Value) -> String {
    match value {
        Value::String(_, s) => quote(s),
        Value::Char(_, c) => quote(&c.to_string()),
        Value::Bool(_, b) => b.to_string(),
        Value::Num(_, num) => match (integer(value), num.to_f64()) {
            (Some(n), _) => n.to_string(),
            (None, Some(f)) => f.to_string(),
            (None, None) => format!("{num:?}"),
        },
        Value::Empty(..) => "none".to_owned(),
        Value::Dict(_, dict) => {
            let entries: Vec<String> = dict
                .iter()
                .map(|(k, v)| format!("{k} = {}", render(v)))
                .collect();
            format!("{{{}}}", entries.join(", "))
        }
        Value::Array(_, items) => {
            let items: Vec<String> = items.iter().map(render).collect();
            format!("[{}]", items.join(", "))
        }
    }
}

/// [`render`], cut short for error messages (an unknown table can be large).
fn render_short(value: &Value) -> String {
    const MAX: usize = 120;
    let text = render(value);
    match text.char_indices().nth(MAX) {
        Some((cut, _)) => format!("{}...", &text[..cut]),
        None => text,
    }
}
