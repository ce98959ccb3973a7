//! From the merged, untyped tree to [`Settings`] (ripgrep's "high-level args"): every key is
//! checked against the schema, every value parsed, and *every* problem recorded before giving
//! up, each naming the key, the value, its origin and what is allowed. Pure, but for one look
//! at the file system: that the TLS files of an enabled OTLP exporter can be opened.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::time::Duration;

use figment::value::{Dict, Num, Value};
use figment::{Figment, Provider};
use ipnet::IpNet;

use super::error::{ConfigError, ErrorKind, Origin};
use super::layers::{self, ENV_OTEL_METRICS_ENDPOINT, ENV_PREFIX};
use super::{
    defaults, LogFormat, LogSettings, OtlpProtocol, OtlpSettings, OtlpTemporality, PollSettings,
    PrometheusSettings, Settings, TlsFiles,
};
use crate::source::SourceKind;
use crate::target::{PortRange, Target, Targets};

/// Top-level keys.
const TOP_KEYS: &[&str] = &["targets", "poll", "prometheus", "log", "otlp"];
const TARGET_KEYS: &[&str] = &["name", "address", "port", "local_ports"];
const POLL_KEYS: &[&str] = &["interval", "source"];
const PROMETHEUS_KEYS: &[&str] = &["enabled", "listen"];
const LOG_KEYS: &[&str] = &["format", "level"];
const OTLP_KEYS: &[&str] = &[
    "enabled",
    "endpoint",
    "protocol",
    "interval",
    "timeout",
    "temporality",
    "headers",
    "tls",
];
const TLS_KEYS: &[&str] = &["ca_file", "cert_file", "key_file"];

const ALLOWED_ADDRESS: &str =
    "expected an IP address or CIDR block, such as \"10.0.0.5\", \"10.0.0.0/24\" or \"fd00::5\"";
const ALLOWED_PORT: &str = "expected a port number from 1 to 65535";
const ALLOWED_RANGE: &str =
    "expected [start, end], two port numbers with 1 <= start <= end <= 65535";
const ALLOWED_INTERVAL: &str = "expected a duration above zero and at most 24h: whole seconds \
                                (5) or a humantime string (\"500ms\", \"2s\", \"1m 30s\")";
const ALLOWED_LISTEN: &str = "expected IP:PORT, such as \"127.0.0.1:9464\", \"0.0.0.0:9464\" or \
                              \"[::]:9464\" (host names are not resolved)";
const ALLOWED_ENDPOINT: &str = "expected an http:// or https:// URL with a host, such as \
                                \"http://127.0.0.1:4317\" (gRPC) or \"http://collector:4318\" \
                                (http/protobuf; /v1/metrics is appended)";
const ALLOWED_HEADERS: &str =
    "expected a table of header names to string values, such as { \"x-tenant\" = \"desk-1\" }";
const ALLOWED_PEM: &str = "expected the path of a readable PEM file";
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

    let otlp = r.otlp(&root);

    if !enabled && !otlp.enabled {
        let mut error = ConfigError::new(
            ErrorKind::Conflict,
            "prometheus.enabled",
            format!(
                "nothing would be exported: the Prometheus endpoint is disabled and so is OTLP \
                 push (otlp.enabled = false, {}); enable one of them, e.g. give \
                 --otlp-endpoint URL",
                match r.origins.get("otlp.enabled") {
                    Some(Origin::Default) | None => "the default".to_owned(),
                    Some(origin) => format!("from {origin}"),
                }
            ),
        )
        .value("false");
        error.origin = r.origins.get("prometheus.enabled").cloned();
        r.errors.push(error);
    }

    let settings = Settings {
        targets,
        poll: PollSettings { interval, source },
        prometheus: PrometheusSettings { enabled, listen },
        log: LogSettings { format, level },
        otlp,
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
        self.table_in(root, "", name, known)
    }

    /// [`Self::table`] for the table `name` inside `parent`, whose key path is `path`.
    fn table_in<'v>(
        &mut self,
        parent: &'v Dict,
        path: &str,
        name: &str,
        known: &[&str],
    ) -> Option<&'v Dict> {
        let key = join(path, name);
        match parent.get(name)? {
            Value::Dict(_, dict) => {
                self.unknown_keys(&key, dict, known, &format!("[{key}]"));
                Some(dict)
            }
            other => {
                let message = format!("expected a table with the keys {}", known.join(", "));
                self.error(ErrorKind::InvalidValue, &key, other, name, message);
                None
            }
        }
    }

    /// `[otlp]`, checked as a whole: the endpoint against the protocol, the TLS files against
    /// the endpoint's scheme and the file system (only when push is on: a disabled exporter's
    /// inherited `OTEL_*` settings must not stop the sidecar).
    fn otlp(&mut self, root: &Dict) -> OtlpSettings {
        let table = self.table(root, "otlp", OTLP_KEYS);
        let enabled = self.setting(table, "otlp", "enabled", defaults::OTLP_ENABLED, parse_bool);
        let protocol = self.setting(
            table,
            "otlp",
            "protocol",
            defaults::OTLP_PROTOCOL,
            parse_protocol,
        );
        let default_endpoint = match protocol {
            OtlpProtocol::Grpc => defaults::OTLP_GRPC_ENDPOINT,
            OtlpProtocol::HttpProtobuf => defaults::OTLP_HTTP_ENDPOINT,
        };
        let errors_before = self.errors.len();
        let endpoint = self.setting(
            table,
            "otlp",
            "endpoint",
            default_endpoint.to_owned(),
            |v| parse_endpoint(v, protocol),
        );
        let endpoint_ok = self.errors.len() == errors_before;
        // The signal-specific variable holds the whole URL; everything else a base URL.
        let verbatim = matches!(
            self.origins.get("otlp.endpoint"),
            Some(Origin::Env(var)) if var == ENV_OTEL_METRICS_ENDPOINT
        );
        let url = match protocol {
            OtlpProtocol::Grpc => endpoint.clone(),
            OtlpProtocol::HttpProtobuf => http_export_url(&endpoint, verbatim),
        };
        let interval = self.setting(
            table,
            "otlp",
            "interval",
            defaults::OTLP_INTERVAL,
            parse_interval,
        );
        let timeout = self.setting(
            table,
            "otlp",
            "timeout",
            defaults::OTLP_TIMEOUT,
            parse_interval,
        );
        let temporality = self.setting(
            table,
            "otlp",
            "temporality",
            defaults::OTLP_TEMPORALITY,
            parse_temporality,
        );
        let headers = self.headers(table);
        let tls = self.tls(table);

        if enabled {
            self.check_tls(&tls, endpoint_ok.then_some(endpoint.as_str()));
        }
        OtlpSettings {
            enabled,
            endpoint,
            url,
            protocol,
            interval,
            timeout,
            headers,
            temporality,
            tls,
        }
    }

    fn headers(&mut self, otlp: Option<&Dict>) -> BTreeMap<String, String> {
        let mut headers = BTreeMap::new();
        let Some(table) = otlp.and_then(|t| t.get("headers")) else {
            self.origins.insert("otlp.headers".into(), Origin::Default);
            return headers;
        };
        let Value::Dict(_, dict) = table else {
            let message = ALLOWED_HEADERS.to_owned();
            self.error(
                ErrorKind::InvalidValue,
                "otlp.headers",
                table,
                "headers",
                message,
            );
            return headers;
        };
        let origin = self.origin(table, "headers");
        self.origins.insert("otlp.headers".into(), origin);
        for (name, value) in dict {
            let key = format!("otlp.headers.{name}");
            let Some(text) = self.parse(&key, name, value, |v| parse_header(name, v)) else {
                continue;
            };
            // `layers` lower-cased every name already.
            headers.insert(name.clone(), text);
        }
        headers
    }

    fn tls(&mut self, otlp: Option<&Dict>) -> TlsFiles {
        let table = otlp.and_then(|t| self.table_in(t, "otlp", "tls", TLS_KEYS));
        let mut file = |field: &str| {
            let key = format!("otlp.tls.{field}");
            match table {
                Some(t) => self.optional(t, &key, field, parse_path).flatten(),
                None => {
                    self.origins.insert(key, Origin::Default);
                    None
                }
            }
        };
        TlsFiles {
            ca_file: file("ca_file"),
            cert_file: file("cert_file"),
            key_file: file("key_file"),
        }
    }

    /// The TLS files exist, come in the right combination, and have an https:// endpoint to
    /// be used with (`endpoint` is `None` when it was invalid, and reported already).
    fn check_tls(&mut self, tls: &TlsFiles, endpoint: Option<&str>) {
        let files = [
            ("ca_file", &tls.ca_file),
            ("cert_file", &tls.cert_file),
            ("key_file", &tls.key_file),
        ];
        for (field, path) in files {
            let Some(path) = path else { continue };
            if let Err(message) = readable_file(path) {
                let key = format!("otlp.tls.{field}");
                let mut error = ConfigError::new(ErrorKind::InvalidValue, &key, message)
                    .value(quote(&path.display().to_string()));
                error.origin = self.origins.get(&key).cloned();
                self.errors.push(error);
            }
        }
        let unpaired = match (&tls.cert_file, &tls.key_file) {
            (Some(path), None) => Some(("cert_file", path, "key_file")),
            (None, Some(path)) => Some(("key_file", path, "cert_file")),
            _ => None,
        };
        if let Some((field, path, other)) = unpaired {
            let key = format!("otlp.tls.{field}");
            let mut error = ConfigError::new(
                ErrorKind::Conflict,
                &key,
                format!(
                    "needs otlp.tls.{other} too: a client certificate goes with its private key"
                ),
            )
            .value(quote(&path.display().to_string()));
            error.origin = self.origins.get(&key).cloned();
            self.errors.push(error);
        }
        let any = files.iter().any(|(_, p)| p.is_some());
        let Some(endpoint) = endpoint else { return };
        if any && endpoint.to_ascii_lowercase().starts_with("http://") {
            let named: Vec<String> = files
                .iter()
                .filter(|(_, p)| p.is_some())
                .map(|(f, _)| format!("otlp.tls.{f}"))
                .collect();
            let mut error = ConfigError::new(
                ErrorKind::Conflict,
                "otlp.endpoint",
                format!(
                    "is plain http://, but TLS files are set ({}): use an https:// endpoint to \
                     talk TLS to the collector, or drop the TLS files",
                    named.join(", ")
                ),
            )
            .value(quote(endpoint));
            error.origin = self.origins.get("otlp.endpoint").cloned();
            self.errors.push(error);
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
    let sections: [(&str, &[&str]); 4] = [
        ("poll", POLL_KEYS),
        ("prometheus", PROMETHEUS_KEYS),
        ("log", LOG_KEYS),
        ("otlp", OTLP_KEYS),
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

fn parse_protocol(value: &Value) -> Result<OtlpProtocol, String> {
    let allowed = || format!("expected one of: {}", OtlpProtocol::ALLOWED);
    let text = string(value).ok_or_else(allowed)?.trim();
    if text.eq_ignore_ascii_case("http/json") {
        return Err(format!(
            "OTLP/HTTP with JSON bodies is not supported; {}",
            allowed()
        ));
    }
    [OtlpProtocol::Grpc, OtlpProtocol::HttpProtobuf]
        .into_iter()
        .find(|p| p.as_str().eq_ignore_ascii_case(text))
        .ok_or_else(allowed)
}

fn parse_temporality(value: &Value) -> Result<OtlpTemporality, String> {
    let allowed = || format!("expected one of: {}", OtlpTemporality::ALLOWED);
    let text = string(value).ok_or_else(allowed)?.trim();
    [
        OtlpTemporality::Cumulative,
        OtlpTemporality::Delta,
        OtlpTemporality::LowMemory,
    ]
    .into_iter()
    .find(|t| t.as_str().eq_ignore_ascii_case(text))
    .ok_or_else(allowed)
}

/// An OTLP endpoint: an absolute http(s) URL with a host, without credentials, query or
/// fragment; for gRPC without a path (the service defines it). Returned trimmed.
pub(crate) fn parse_endpoint(value: &Value, protocol: OtlpProtocol) -> Result<String, String> {
    let text = string(value).ok_or(ALLOWED_ENDPOINT)?.trim();
    let url =
        url::Url::parse(text).map_err(|e| format!("is not a URL ({e}); {ALLOWED_ENDPOINT}"))?;
    match url.scheme() {
        "http" | "https" => {}
        other => return Err(format!("has the scheme {other}://; {ALLOWED_ENDPOINT}")),
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(format!("has no host; {ALLOWED_ENDPOINT}"));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(
            "has credentials in it; send them as a header instead ([otlp] headers, e.g. \
             { authorization = \"Basic ...\" })"
                .to_owned(),
        );
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err(format!("has a query or fragment; {ALLOWED_ENDPOINT}"));
    }
    if protocol == OtlpProtocol::Grpc && !matches!(url.path(), "" | "/") {
        return Err(format!(
            "has the path {}, which gRPC does not use (the service defines it); give \
             scheme://host:port, or set protocol = \"http/protobuf\" for an HTTP endpoint",
            url.path()
        ));
    }
    Ok(text.to_owned())
}

/// Where OTLP/HTTP posts: a base URL with `/v1/metrics` appended, unless it already ends so;
/// the signal-specific variable's URL as is.
pub(crate) fn http_export_url(endpoint: &str, verbatim: bool) -> String {
    let base = endpoint.trim_end_matches('/');
    if verbatim || base.ends_with("/v1/metrics") {
        endpoint.to_owned()
    } else {
        format!("{base}/v1/metrics")
    }
}

/// A header's value, checked to be sendable as an HTTP header and as ASCII gRPC metadata.
fn parse_header(name: &str, value: &Value) -> Result<String, String> {
    if http::HeaderName::from_bytes(name.as_bytes()).is_err() {
        return Err(format!(
            "`{name}` is not a valid header name (letters, digits and !#$%&'*+-.^_`|~ only)"
        ));
    }
    if name.to_ascii_lowercase().ends_with("-bin") {
        return Err(format!(
            "`{name}` would be binary gRPC metadata (the -bin suffix), which is not supported"
        ));
    }
    let text = string(value).ok_or(ALLOWED_HEADERS)?;
    if http::HeaderValue::from_str(text).is_err() {
        return Err("is not a valid header value: printable ASCII only, no line breaks".to_owned());
    }
    Ok(text.to_owned())
}

fn parse_path(value: &Value) -> Result<std::path::PathBuf, String> {
    match string(value).map(str::trim) {
        Some(text) if !text.is_empty() => Ok(std::path::PathBuf::from(text)),
        _ => Err(ALLOWED_PEM.to_owned()),
    }
}

/// The one look at the file system outside the config file itself: a TLS file named in the
/// configuration must be there now, not fail the first export an interval later.
fn readable_file(path: &Path) -> Result<(), String> {
    let file =
        std::fs::File::open(path).map_err(|e| format!("cannot be read: {e}; {ALLOWED_PEM}"))?;
    match file.metadata() {
        Ok(m) if m.is_file() => Ok(()),
        Ok(_) => Err(format!("is not a regular file; {ALLOWED_PEM}")),
        Err(e) => Err(format!("cannot be read: {e}; {ALLOWED_PEM}")),
    }
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
