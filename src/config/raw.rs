//! Deserializing the merged layers into [`Settings`] (ripgrep's "low-level args": with the
//! `[[targets]]` tables as given) and validating that into the settings the sidecar runs on.
//!
//! # Adding a key
//! One field on its section's struct in `config/mod.rs`, with its default after `=` (else its
//! type's), and its check: a `with` naming one of the [`checks!`] below (add one there for a
//! new kind of value), plus a line in [`validate`] when it depends on other keys. Unknown keys,
//! wrong types, every value's origin and `fix-monitor config` need nothing more.
//!
//! # Every problem at once
//! serde stops at the first error. [`extract`] therefore deserializes the merged tree, and on
//! an error records it (the error's path names the key, the tree holds the value and its
//! figment tag, the tag leads to the origin), removes the offending key from the tree and tries
//! again, until the tree deserializes. Leaf checks run inside deserialization, so a bad value
//! reports like an unknown key: key, value, origin and what is allowed.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use figment::error::Kind;
use figment::value::{Dict, Value};
use figment::{Figment, Provider};
use ipnet::IpNet;
use serde::de::{DeserializeOwned, Error as _};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::json;
use strum::VariantNames;

use super::error::ErrorKind::{self, *};
use super::error::{ConfigError, Origin};
use super::layers::{self, ENV_OTEL_METRICS_ENDPOINT, ENV_PREFIX};
use super::OtlpTemporality;
use super::{
    defaults, FixSettings, LogFormat, LogonLockout, MessageLimit, OtlpProtocol, OtlpSettings,
    TlsTunnel,
};
use super::{Settings, TlsFiles};
use crate::fix::bursts::WINDOW_NAMES;
use crate::schedule::{Schedule, ScheduleConfig};
use crate::source::SourceKind;
use crate::target::{PortRange, Target, Targets};

/// One `[[targets]]` table. Per-target keys are optional: `None` means "any" or "derived".
/// Validated, with its name and staleness filled in, also what `explain` prints for a target.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawTarget {
    #[serde(with = "check::name")]
    name: Option<String>,
    /// Required; `validate` reports it missing.
    #[serde(with = "check::address")]
    address: Option<IpNet>,
    #[serde(with = "check::port")]
    port: Option<u16>,
    #[serde(with = "check::port_range")]
    local_ports: Option<PortRange>,
    /// The sessions' FIX HeartBtInt; `stale_after` defaults to twice it.
    #[serde(with = "check::interval")]
    heartbeat: Option<Duration>,
    /// Default: twice `heartbeat`; neither set: staleness is not judged.
    #[serde(with = "check::interval")]
    stale_after: Option<Duration>,
    /// The FIX layer's link from log sessions to this target: their CompIDs.
    #[serde(with = "check::comp_ids")]
    comp_ids: Vec<String>,
    /// The venue's lockout after too many logons: `{ attempts = 5, within = "60s" }`.
    #[serde(with = "check::logon_lockout")]
    logon_lockout: Option<LogonLockout>,
    /// The venue's throttle: `{ count = 50, per = "1s" }`.
    #[serde(with = "check::message_limit")]
    message_limit: Option<MessageLimit>,
    /// The local TLS tunnel the gateway talks plaintext to: `"127.0.0.1:7001"`.
    #[serde(with = "check::tls_tunnel")]
    tls_tunnel: Option<TlsTunnel>,
    /// A `[[schedules]]` name: when its sessions are planned to be up.
    #[serde(with = "check::name")]
    schedule: Option<String>,
}

// ---- Leaf checks: `check::NAME`, for a field of its type or an `Option` of it. ----

/// Each check takes the value as figment holds it (a variable or flag gives a string, so
/// numbers and booleans are also read from text) and returns the typed value, or what is wrong
/// and what is allowed. Each is a serde `with` module: its `serialize` writes the value as the
/// file takes it (as it is, or through the function after the parser), for `fix-monitor config`.
macro_rules! checks {
    ($($name:ident -> $ty:ty = $parse:expr $(, $show:expr)?;)*) => {
        pub(crate) mod check {$(
            pub(crate) mod $name {
                use super::super::*;
                pub(crate) fn deserialize<'de, D, T>(d: D) -> Result<T, D::Error>
                where D: Deserializer<'de>, T: From<$ty> {
                    let value = <Value as Deserialize>::deserialize(d)?;
                    ($parse)(&value).map(T::from).map_err(D::Error::custom)
                }
                pub(crate) fn serialize<S, T>(v: &T, s: S) -> Result<S::Ok, S::Error>
                where S: Serializer, T: Clone + Into<Option<$ty>> {
                    let v: Option<$ty> = v.clone().into();
                    $(let v = v.as_ref().map($show);)?
                    v.serialize(s)
                }
            }
        )*}
    };
}

checks! {
    name -> String = parse_name;
    text -> String = |v: &Value| v.as_str().map(str::to_owned).ok_or("expected a string");
    address -> IpNet = parse_address, show_net;
    port -> u16 = parse_port;
    port_range -> PortRange = parse_range, |r: &PortRange| [r.start, r.end];
    interval -> Duration = parse_interval, show_duration;
    boolean -> bool = parse_bool;
    listen -> SocketAddr = parse_listen;
    log_level -> String = parse_log_level;
    path -> PathBuf = |v| text(v, ALLOWED_PEM).map(PathBuf::from);
    state_dir -> PathBuf = |v| text(v, ALLOWED_STATE_DIR).map(PathBuf::from);
    source -> SourceKind = |v: &Value| parse_enum(v, SourceKind::ALLOWED);
    log_format -> LogFormat = |v: &Value| parse_enum(v, &LogFormat::VARIANTS.join(", "));
    temporality -> OtlpTemporality = |v| parse_enum(v, &OtlpTemporality::VARIANTS.join(", "));
    protocol -> OtlpProtocol = parse_protocol;
    comp_ids -> Vec<String> = parse_comp_ids;
    glob -> String = parse_glob;
    grace -> Duration = parse_grace, show_duration;
    logon_lockout -> LogonLockout = parse_logon_lockout,
        |l: &LogonLockout| json!({ "attempts": l.attempts, "within": show_duration(&l.within) });
    message_limit -> MessageLimit = parse_message_limit,
        |l: &MessageLimit| json!({ "count": l.count, "per": WINDOW_NAMES[l.window] });
    tls_tunnel -> TlsTunnel = parse_tls_tunnel, |t: &TlsTunnel| t.to_string();
}

/// A duration as humantime writes it (`"1m 30s"`).
fn show_duration(d: &Duration) -> String {
    humantime::format_duration(*d).to_string()
}

/// A single address without its prefix length, as it was most likely written.
fn show_net(net: &IpNet) -> String {
    match net.prefix_len() == net.max_prefix_len() {
        true => net.addr().to_string(),
        false => net.to_string(),
    }
}

// ---- Extraction: every problem of the merged tree. ----

/// Deserializes the merged tree, collecting every error (see the module docs). Returns the
/// settings as deserialized, the tree they came from (for origins), and the keys that had errors.
pub(crate) fn extract(
    figment: &Figment,
    errors: &mut Vec<ConfigError>,
) -> (Settings, Dict, BTreeSet<String>) {
    // Every layer's `data` is infallible (`layers::Layer`), and so is merging them.
    let profiles = figment.data().expect("the layers always give their data");
    let mut tree = profiles.into_values().next().unwrap_or_default();
    let mut failed = BTreeSet::new();
    loop {
        // Values keep the tags they got in `figment`, which lead to their origins.
        let error = match Value::from(tree.clone()).deserialize::<Settings>() {
            Ok(raw) => return (raw, tree, failed),
            Err(e) => e,
        };
        let mut path = error.path.clone();
        if let Kind::UnknownField(field, _) = &error.kind {
            if path.last() != Some(field) {
                path.push(field.clone());
            }
        }
        let (key, value) = (key_of(&path), at(&mut tree, &path).map(|v| v.clone()));
        let field = path.last().map(String::as_str).unwrap_or_default();
        let tag = value.as_ref().map(Value::tag);
        let origin = tag.map(|tag| layers::origin_of(figment, tag, field));
        let (kind, message) = match &error.kind {
            Kind::UnknownField(field, expected) => {
                let message = unknown_key(&path, field, expected, origin.as_ref());
                (UnknownKey, message)
            }
            Kind::MissingField(field) => (MissingValue, format!("`{field}` is missing")),
            Kind::Message(message) => (InvalidValue, message.clone()),
            other => (InvalidValue, other.to_string()),
        };
        let mut error = ConfigError::new(kind, &key, message).origin(origin);
        error.value = value.as_ref().map(render_short);
        errors.push(error);
        failed.insert(key);
        if !remove(&mut tree, &path) {
            // Cannot happen (the error's path comes from this tree); never loop on it.
            return (Settings::default(), tree, failed);
        }
    }
}

fn unknown_key(path: &[String], field: &str, expected: &[&str], origin: Option<&Origin>) -> String {
    let section = match &path[..path.len() - 1] {
        [] => "the top level".to_owned(),
        [.., last] if last.parse::<usize>().is_ok() => "a target".to_owned(),
        parent => format!("[{}]", parent.join(".")),
    };
    let mut message = format!("unknown key; {section} accepts: {}", expected.join(", "));
    // `FIX_MONITOR_POLL_INTERVAL` (one underscore) is the likely slip.
    let slip = field.split_once('_');
    let slip = slip.filter(|(section, _)| ["poll", "prometheus", "log", "otlp"].contains(section));
    if let (Some(Origin::Env(_)), 1, Some((section, rest))) = (origin, path.len(), slip) {
        let (section, rest) = (section.to_ascii_uppercase(), rest.to_ascii_uppercase());
        let hint = format!("{ENV_PREFIX}{section}__{rest}");
        message += &format!(" (sections nest with a double underscore: did you mean {hint}?)");
    }
    message
}

/// `["targets", "0", "port"]` -> `targets[0].port`.
fn key_of(path: &[String]) -> String {
    let part = |part: &String| match part.parse::<usize>() {
        Ok(_) => format!("[{part}]"),
        Err(_) => format!(".{part}"),
    };
    let key: String = path.iter().map(part).collect();
    key.strip_prefix('.').unwrap_or(&key).to_owned()
}

/// The value at `path` (table keys and list indices).
pub(crate) fn at<'a>(tree: &'a mut Dict, path: &[String]) -> Option<&'a mut Value> {
    let (first, rest) = path.split_first()?;
    rest.iter()
        .try_fold(tree.get_mut(first)?, |value, part| match value {
            Value::Dict(_, dict) => dict.get_mut(part),
            Value::Array(_, items) => items.get_mut(part.parse::<usize>().ok()?),
            _ => None,
        })
}

/// Removes the value at `path`. A list element is emptied rather than removed, so that the
/// indices in later errors still name the right element.
fn remove(tree: &mut Dict, path: &[String]) -> bool {
    match path.split_last() {
        Some((last, [])) => tree.remove(last).is_some(),
        Some((last, parent)) => match at(tree, parent) {
            Some(Value::Dict(_, dict)) => dict.remove(last).is_some(),
            Some(Value::Array(..)) => at(tree, path)
                .map(|item| *item = Dict::new().into())
                .is_some(),
            _ => false,
        },
        None => false,
    }
}

/// Every key of the tree (tables, lists and values) with its origin.
pub(crate) fn origins(figment: &Figment, tree: &Dict) -> BTreeMap<String, Origin> {
    fn walk(figment: &Figment, key: String, field: &str, value: &Value, out: &mut Origins) {
        match value {
            Value::Dict(_, dict) => {
                for (k, v) in dict {
                    walk(figment, format!("{key}.{k}"), k, v, out);
                }
            }
            Value::Array(_, items) => {
                for (i, v) in items.iter().enumerate() {
                    walk(figment, format!("{key}[{i}]"), field, v, out);
                }
            }
            _ => {}
        }
        out.insert(key, layers::origin_of(figment, value.tag(), field));
    }
    let mut out = BTreeMap::new();
    for (k, v) in tree {
        walk(figment, k.clone(), k, v, &mut out);
    }
    out
}

type Origins = BTreeMap<String, Origin>;

// ---- Validation: what depends on more than one value. ----

/// What validation needs beyond the raw values, and the problems it finds.
pub(crate) struct Context<'a> {
    /// The configuration file that was (or would have been) read, for the "no targets" hint.
    pub config_path: &'a Path,
    /// The file could not be read or parsed: it may have held the targets.
    pub file_failed: bool,
    /// Where each value came from ([`origins`]).
    pub origins: &'a Origins,
    /// Keys whose values were already reported ([`extract`]).
    pub failed: &'a BTreeSet<String>,
    pub errors: &'a mut Vec<ConfigError>,
}

impl Context<'_> {
    fn origin(&self, key: &str) -> Origin {
        self.origins.get(key).cloned().unwrap_or(Origin::Default)
    }

    /// A problem with the value at `key` (shown as `value`), from where `key` came from.
    fn report(&mut self, kind: ErrorKind, key: &str, value: String, message: impl Into<String>) {
        let error = ConfigError::new(kind, key, message).value(value);
        self.errors.push(error.origin(self.origin(key)));
    }

    /// `key` is missing from the table at `table`, which came from somewhere.
    fn missing(&mut self, key: String, table: &str, message: String) {
        let error = ConfigError::new(MissingValue, key, message);
        self.errors.push(error.origin(self.origin(table)));
    }
}

/// Validates the deserialized [`Settings`]: the `[[targets]]` tables into `targets`, and the
/// problems that involve more than one value. The settings are used only if no problem was
/// reported.
pub(crate) fn validate(mut s: Settings, cx: &mut Context<'_>) -> Settings {
    s.otlp = otlp(s.otlp, cx);
    if !s.prometheus.enabled && !s.otlp.enabled && !cx.failed.contains("prometheus.enabled") {
        let otlp_origin = match cx.origin("otlp.enabled") {
            Origin::Default => "the default".to_owned(),
            origin => format!("from {origin}"),
        };
        let message = format!(
            "nothing would be exported: the Prometheus endpoint is disabled and so is OTLP push \
             (otlp.enabled = false, {otlp_origin}); enable one of them, e.g. give \
             --otlp-endpoint URL"
        );
        cx.report(Conflict, "prometheus.enabled", "false".into(), message);
    }
    let (targets, kept) = targets(s.tables.take(), cx);
    let names: Vec<_> = kept.iter().map(|(i, t)| (*i, t.schedule.clone())).collect();
    s.target_schedules = schedules(&s.schedules, &names, cx);
    tls_tunnels(&targets, &kept, s.fix.capture, cx);
    s.fix = fix(s.fix, cx);
    // What `[fix]` keeps of each target, by target id.
    s.fix.target_comp_ids = kept.iter().map(|(_, t)| t.comp_ids.clone()).collect();
    s.fix.target_logon_lockout = kept.iter().map(|(_, t)| t.logon_lockout).collect();
    s.fix.target_message_limit = kept.iter().map(|(_, t)| t.message_limit).collect();
    s.fix.target_tls_tunnel = kept.iter().map(|(_, t)| t.tls_tunnel).collect();
    s.targets = targets;
    s.tables = Some(kept.into_iter().map(|(_, t)| t).collect());
    s
}

/// `[[schedules]]` and the targets' `schedule`: checked by `crate::schedule`, reported here
/// with their origins.
fn schedules(
    raw: &[ScheduleConfig],
    names: &[(usize, Option<String>)],
    cx: &mut Context,
) -> Vec<Option<Arc<Schedule>>> {
    let failed = |i: usize| {
        let table = format!("schedules[{i}]");
        cx.failed.iter().any(|k| k.starts_with(&table))
    };
    let (by_name, mut problems) = crate::schedule::build(raw, failed);
    let (resolved, unknown) = crate::schedule::for_targets(names, &by_name);
    problems.extend(unknown);
    for p in problems {
        match p.value {
            Some(value) => cx.report(p.kind, &p.key, value, p.message),
            None => {
                let table = p.key.rsplit_once('.').map_or("", |(t, _)| t).to_owned();
                cx.missing(p.key, &table, p.message);
            }
        }
    }
    resolved
}

/// `[fix]` as a whole: every log needs a path, and the log source needs our CompIDs to tell
/// which side sent a message.
fn fix(mut fix: FixSettings, cx: &mut Context) -> FixSettings {
    for (i, l) in fix.logs.iter().enumerate() {
        let key = format!("fix.logs[{i}].path");
        if l.path.is_none() && !cx.failed.contains(&key) {
            let message = "missing; every [[fix.logs]] needs a path (a file or glob pattern)";
            cx.missing(key, &format!("fix.logs[{i}]"), message.to_owned());
        }
    }
    fix.logs.retain(|l| l.path.is_some());
    let failed = cx.failed.contains("fix.our_comp_ids");
    if !fix.logs.is_empty() && fix.our_comp_ids.is_empty() && !failed {
        let message = "the log source ([[fix.logs]]) needs our CompIDs to tell which side sent \
                       each message: give the gateway's SenderCompIDs, e.g. our_comp_ids = \
                       [\"GW\"]";
        cx.report(Conflict, "fix.our_comp_ids", "[]".into(), message);
    }
    fix
}

/// `targets[].tls_tunnel` as a whole: a tunnel is read only off the wire (`fix.capture`), is
/// no target's own session (its plaintext leg would be taken for the target's), and serves one
/// target (its FIX sessions are that target's). `kept`: the targets with their index in the
/// configuration.
fn tls_tunnels(targets: &Targets, kept: &[(usize, RawTarget)], capture: bool, cx: &mut Context) {
    const NO_CAPTURE: &str =
        "the plaintext leg to a tunnel is read off the wire: it needs [fix] capture = true";
    let mut first: BTreeMap<SocketAddr, usize> = BTreeMap::new();
    for (i, tunnel) in kept.iter().filter_map(|(i, t)| Some((*i, t.tls_tunnel?))) {
        let addr = match tunnel {
            TlsTunnel::At(addr) => Some(addr),
            TlsTunnel::Auto => None,
        };
        let claimed = addr.and_then(|a| {
            (targets.iter())
                .find(|t| t.net.contains(&a.ip()) && t.port.is_none_or(|p| p == a.port()))
        });
        let message = match (claimed, addr.map(|a| *first.entry(a).or_insert(i))) {
            _ if !capture && !cx.failed.contains("fix.capture") => NO_CAPTURE.to_owned(),
            (Some(t), _) => format!(
                "the tunnel's address is inside target `{}` ({}): its plaintext leg would be \
                 taken for that target's own session; give the address the gateway connects \
                 to, outside every target",
                t.name, t.net
            ),
            (None, Some(j)) if j != i => {
                format!("targets[{j}] names the same tunnel; a tunnel serves one target")
            }
            _ => continue,
        };
        let key = format!("targets[{i}].tls_tunnel");
        cx.report(Conflict, &key, quote(&tunnel.to_string()), message);
    }
}

/// The targets, and the raw tables they came from with their index in the configuration.
fn targets(raw: Option<Vec<RawTarget>>, cx: &mut Context) -> (Targets, Vec<(usize, RawTarget)>) {
    let no_targets = format!(
        "no targets to watch; give one with --ip ADDR [--target-port PORT], with DOWNSTREAM_IP \
         (and DOWNSTREAM_PORT) in the environment, or as [[targets]] in the config file ({}) or \
         FIX_MONITOR_TARGETS",
        cx.config_path.display()
    );
    match &raw {
        Some(items) if items.is_empty() => cx.report(NoTargets, "targets", "[]".into(), no_targets),
        None if !cx.file_failed && !cx.failed.contains("targets") => cx
            .errors
            .push(ConfigError::new(NoTargets, "targets", no_targets)),
        _ => {}
    }
    let (mut targets, mut kept) = (Vec::new(), Vec::new());
    // Name -> index in the configuration of the first target with it.
    let mut names: BTreeMap<String, usize> = BTreeMap::new();
    for (i, mut t) in raw.into_iter().flatten().enumerate() {
        let path = format!("targets[{i}]");
        if cx.failed.iter().any(|k| k.starts_with(&path)) {
            continue;
        }
        let Some(net) = t.address else {
            let message = format!("missing; every target needs an address: {ALLOWED_ADDRESS}");
            cx.missing(format!("{path}.address"), &path, message);
            continue;
        };
        let name = (t.name.take()).unwrap_or_else(|| Target::default_name(&net, t.port));
        let name_key = format!("{path}.name");
        let first = *names.entry(name.clone()).or_insert(i);
        if first != i {
            const DERIVED: &str = " (this one is the default name, from address and port: give \
                                   one of the two targets a `name`)";
            let derived = (cx.origin(&name_key) == Origin::Default).then_some(DERIVED);
            let message = format!(
                "this name is already used by targets[{first}]; names must be unique, as they \
                 label the metrics{}",
                derived.unwrap_or_default()
            );
            cx.report(DuplicateName, &name_key, quote(&name), message);
        }
        // As it runs, and as `fix-monitor config` shows it.
        t.stale_after = t.stale_after.or(t.heartbeat.map(|h| h * 2));
        targets.push(Target {
            name: name.clone(),
            net,
            port: t.port,
            local_ports: t.local_ports,
            heartbeat: t.heartbeat,
            stale_after: t.stale_after,
        });
        t.name = Some(name);
        kept.push((i, t));
    }
    (Targets::new(targets), kept)
}

/// `[otlp]` as a whole: the endpoint against the protocol, the TLS files against the endpoint's
/// scheme (only when push is on: a disabled exporter's inherited `OTEL_*` settings must not
/// stop the sidecar).
fn otlp(mut raw: OtlpSettings, cx: &mut Context<'_>) -> OtlpSettings {
    let origin = cx.origin("otlp.endpoint");
    let endpoint = match origin {
        Origin::Default if raw.protocol == OtlpProtocol::Grpc => defaults::OTLP_GRPC_ENDPOINT,
        Origin::Default => defaults::OTLP_HTTP_ENDPOINT,
        _ => &raw.endpoint,
    }
    .to_owned();
    let endpoint_error = parse_endpoint(&endpoint, raw.protocol).err();
    if let Some(message) = &endpoint_error {
        cx.report(InvalidValue, "otlp.endpoint", quote(&endpoint), message);
    }
    raw.endpoint = endpoint.trim().to_owned();
    // The signal-specific variable holds the whole URL; everything else a base URL.
    let verbatim = origin == Origin::Env(ENV_OTEL_METRICS_ENDPOINT.into());
    raw.url = match raw.protocol {
        OtlpProtocol::Grpc => raw.endpoint.clone(),
        OtlpProtocol::HttpProtobuf => http_export_url(&raw.endpoint, verbatim),
    };
    for (name, value) in &raw.headers {
        if let Err(message) = check_header(name, value) {
            let key = format!("otlp.headers.{name}");
            cx.report(InvalidValue, &key, quote(value), message);
        }
    }
    if raw.enabled {
        let endpoint = endpoint_error.is_none().then_some(raw.endpoint.as_str());
        check_tls(&raw.tls, endpoint, cx);
    }
    raw
}

/// The TLS files come in the right combination and have an https:// endpoint to be used with
/// (`endpoint` is `None` when it was invalid, and reported already). That they can be read is
/// the start-up step's to check.
fn check_tls(tls: &TlsFiles, endpoint: Option<&str>, cx: &mut Context) {
    let show = |path: &PathBuf| quote(&path.display().to_string());
    let unpaired = match (&tls.cert_file, &tls.key_file) {
        (Some(path), None) => Some(("cert_file", path, "key_file")),
        (None, Some(path)) => Some(("key_file", path, "cert_file")),
        _ => None,
    };
    if let Some((field, path, other)) = unpaired {
        let message =
            format!("needs otlp.tls.{other} too: a client certificate goes with its private key");
        cx.report(Conflict, &format!("otlp.tls.{field}"), show(path), message);
    }
    // The TLS files some layer set (and that passed their check).
    let mut named = vec![
        "otlp.tls.ca_file",
        "otlp.tls.cert_file",
        "otlp.tls.key_file",
    ];
    named.retain(|key| cx.origins.contains_key(*key));
    let Some(endpoint) = endpoint else { return };
    if !named.is_empty() && endpoint.to_ascii_lowercase().starts_with("http://") {
        let named = named.join(", ");
        let message = format!(
            "is plain http://, but TLS files are set ({named}): use an https:// endpoint to talk \
             TLS to the collector, or drop the TLS files"
        );
        cx.report(Conflict, "otlp.endpoint", quote(endpoint), message);
    }
}

// ---- Parsers: one value in, a typed value or "what is wrong; what is allowed" out. ----

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
pub(crate) const ALLOWED_PEM: &str = "expected the path of a readable PEM file";
pub(crate) const ALLOWED_STATE_DIR: &str = "expected a directory fix-monitor can create files \
     in (such as systemd's StateDirectory, /var/lib/fix-monitor)";
const ALLOWED_LEVEL: &str =
    "expected a tracing filter directive, such as \"info\", \"debug\" or \"warn,fix_monitor=debug\"";

/// Any integer, whatever width figment stored it in, or a string of digits (variables and flags
/// are text); `None` for anything else.
fn integer(value: &Value) -> Option<i128> {
    let Value::String(_, s) = value else {
        let unsigned = || value.to_u128().map(|v| v.try_into().unwrap_or(i128::MAX));
        return value.to_i128().or_else(unsigned);
    };
    let s = s.trim();
    let digits = s.strip_prefix('-').unwrap_or(s);
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some(s.parse().unwrap_or(i128::MAX))
}

/// A string, trimmed and not empty; else what is `allowed`.
fn text<'a>(value: &'a Value, allowed: &str) -> Result<&'a str, String> {
    let text = value.as_str().map(str::trim).filter(|t| !t.is_empty());
    text.ok_or_else(|| allowed.to_owned())
}

fn parse_address(value: &Value) -> Result<IpNet, String> {
    let text = text(value, ALLOWED_ADDRESS)?;
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
    // Peers are compared in canonical form (IPv4-mapped -> IPv4), so a mapped target would
    // never match anything.
    let v4 = ip.to_canonical();
    if v4 != ip {
        return Err(format!(
            "is an IPv4-mapped IPv6 address: write \"{v4}\", which also matches dual-stack sockets"
        ));
    }
    Ok(IpNet::from(ip))
}

fn parse_port(value: &Value) -> Result<u16, String> {
    match integer(value) {
        Some(0) => Err(format!(
            "0 is not a port; {ALLOWED_PORT} (leave `port` out to match any port)"
        )),
        Some(n) => u16::try_from(n).map_err(|_| format!("out of range; {ALLOWED_PORT}")),
        None => Err(ALLOWED_PORT.to_owned()),
    }
}

fn parse_range(value: &Value) -> Result<PortRange, String> {
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

fn parse_name(value: &Value) -> Result<String, &str> {
    const ALLOWED: &str = "expected a non-empty string (it labels the target's metrics)";
    let name = value.as_str().filter(|name| !name.trim().is_empty());
    name.map(str::to_owned).ok_or(ALLOWED)
}

/// Whole seconds (a number, or digits from a variable or flag) or a humantime string.
fn duration(value: &Value) -> Result<Duration, String> {
    match (integer(value).map(u64::try_from), value) {
        (Some(Ok(secs)), _) => Ok(Duration::from_secs(secs)),
        (None, Value::String(_, text)) => parse_duration(text),
        _ => Err(ALLOWED_INTERVAL.to_owned()),
    }
}

fn parse_interval(value: &Value) -> Result<Duration, String> {
    match duration(value)? {
        zero if zero.is_zero() => Err(format!("must be above zero; {ALLOWED_INTERVAL}")),
        long if long > defaults::MAX_INTERVAL => Err(format!("is too long; {ALLOWED_INTERVAL}")),
        interval => Ok(interval),
    }
}

/// A duration as the original tools' flags took it: whole seconds (`5`), or a humantime string
/// (`500ms`, `1m 30s`). The one duration parser of the crate (the demo's flags use it too).
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    if !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit()) {
        return text
            .parse()
            .map(Duration::from_secs)
            .map_err(|_| format!("out of range; {ALLOWED_INTERVAL}"));
    }
    // humantime itself, not humantime-serde: its error says what is wrong ("unknown time unit").
    humantime::parse_duration(text).map_err(|e| format!("{e}; {ALLOWED_INTERVAL}"))
}

/// A boolean, or `true` or `false` in any case (variables and flags are text).
fn parse_bool(value: &Value) -> Result<bool, &str> {
    let text = value.as_str().map(|text| text.trim().to_ascii_lowercase());
    let parsed = value.to_bool().or(text.and_then(|text| text.parse().ok()));
    parsed.ok_or("expected true or false")
}

fn parse_listen(value: &Value) -> Result<SocketAddr, String> {
    let text = text(value, ALLOWED_LISTEN)?;
    text.parse().map_err(|_| ALLOWED_LISTEN.to_owned())
}

/// One of an enum's serde names, case-insensitively.
fn parse_enum<T: DeserializeOwned>(value: &Value, allowed: &str) -> Result<T, String> {
    type Text = serde::de::value::StringDeserializer<serde::de::value::Error>;
    let text = value.as_str().map(|text| text.trim().to_ascii_lowercase());
    let parsed = text.and_then(|text| T::deserialize(Text::new(text)).ok());
    parsed.ok_or_else(|| format!("expected one of: {allowed}"))
}

fn parse_protocol(value: &Value) -> Result<OtlpProtocol, String> {
    let text = value.as_str().unwrap_or_default();
    let json = text.trim().eq_ignore_ascii_case("http/json");
    parse_enum(value, &OtlpProtocol::VARIANTS.join(", ")).map_err(|e| match json {
        true => format!("OTLP/HTTP with JSON bodies is not supported; {e}"),
        false => e,
    })
}

const CREDENTIALS: &str = "has credentials in it; send them as a header instead ([otlp] \
     headers, e.g. { authorization = \"Basic ...\" })";

/// An OTLP endpoint: an absolute http(s) URL with a host, without credentials, query or
/// fragment; for gRPC without a path (the service defines it).
fn parse_endpoint(text: &str, protocol: OtlpProtocol) -> Result<(), String> {
    let url = url::Url::parse(text.trim())
        .map_err(|e| format!("is not a URL ({e}); {ALLOWED_ENDPOINT}"))?;
    let scheme = url.scheme();
    if !matches!(scheme, "http" | "https") {
        return Err(format!("has the scheme {scheme}://; {ALLOWED_ENDPOINT}"));
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(format!("has no host; {ALLOWED_ENDPOINT}"));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(CREDENTIALS.to_owned());
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
    Ok(())
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

/// A header, checked to be sendable as an HTTP header and as ASCII gRPC metadata.
fn check_header(name: &str, value: &str) -> Result<(), String> {
    if http::HeaderName::from_bytes(name.as_bytes()).is_err() {
        return Err(format!(
            "`{name}` is not a valid header name (letters, digits and !#$%&'*+-.^_`|~ only)"
        ));
    }
    if name.ends_with("-bin") {
        return Err(format!(
            "`{name}` would be binary gRPC metadata (the -bin suffix), which is not supported"
        ));
    }
    if http::HeaderValue::from_str(value).is_err() {
        return Err("is not a valid header value: printable ASCII only, no line breaks".to_owned());
    }
    Ok(())
}

const ALLOWED_COMP_IDS: &str = "expected a list of CompIDs, e.g. [\"GW1\", \"GW2\"] (or \
     \"GW1,GW2\"): non-empty, printable, without spaces, `=` or `|`";

fn parse_comp_ids(value: &Value) -> Result<Vec<String>, String> {
    let items: Option<Vec<&str>> = match value {
        Value::String(_, s) => Some(s.split(',').map(str::trim).collect()),
        Value::Array(_, a) => a.iter().map(Value::as_str).collect(),
        _ => None,
    };
    let items = items.ok_or(ALLOWED_COMP_IDS)?;
    let valid = |c: u8| c.is_ascii_graphic() && c != b'=' && c != b'|';
    let invalid = |id: &&str| id.is_empty() || !id.bytes().all(valid);
    if let Some(id) = items.iter().find(|id| invalid(id)) {
        return Err(format!("{id:?} is not a CompID; {ALLOWED_COMP_IDS}"));
    }
    Ok(items.into_iter().map(str::to_owned).collect())
}

const ALLOWED_LOCKOUT: &str = "expected a table { attempts = N, within = DURATION }, such as \
     { attempts = 5, within = \"60s\" }: the venue locks the session out after `attempts` logons \
     (2 to 64) within `within` (above zero, at most 24h)";

fn parse_logon_lockout(value: &Value) -> Result<LogonLockout, String> {
    let max = crate::fix::tracker::MAX_LOGON_ATTEMPTS as i128;
    let [attempts, within] = two_keys(value, ["attempts", "within"], ALLOWED_LOCKOUT)?;
    let out_of_range = format!("is not from 2 to {max}");
    let attempts = (integer(attempts).filter(|n| (2..=max).contains(n)))
        .ok_or_else(|| bad("attempts", attempts, &out_of_range, ALLOWED_LOCKOUT))?;
    let within = parse_interval(within).map_err(|_| {
        let what = "is not a duration above zero and at most 24h";
        bad("within", within, what, ALLOWED_LOCKOUT)
    })?;
    let attempts = attempts as u32;
    Ok(LogonLockout { attempts, within })
}

/// The values of a `{ a = .., b = .. }` table that has exactly those keys; else what is wrong.
fn two_keys<'a>(
    value: &'a Value,
    [a, b]: [&str; 2],
    allowed: &str,
) -> Result<[&'a Value; 2], String> {
    let Value::Dict(_, dict) = value else {
        return Err(allowed.to_owned());
    };
    if let Some(key) = dict.keys().find(|k| *k != a && *k != b) {
        return Err(format!("has an unknown key `{key}`; {allowed}"));
    }
    match (dict.get(a), dict.get(b)) {
        (Some(x), Some(y)) => Ok([x, y]),
        _ => Err(format!("needs both `{a}` and `{b}`; {allowed}")),
    }
}

/// A table's bad entry: `key = value what; allowed`.
fn bad(key: &str, value: &Value, what: &str, allowed: &str) -> String {
    format!("{key} = {} {what}; {allowed}", render(value))
}

const ALLOWED_LIMIT: &str = "expected a table { count = N, per = WINDOW }, such as { count = \
     50, per = \"1s\" }: the venue's throttle, `count` messages (1 to 1000000) per `per`, one of \
     the windows the FIX layer measures: \"1ms\", \"10ms\", \"100ms\", \"1s\"";

fn parse_message_limit(value: &Value) -> Result<MessageLimit, String> {
    let [count, per] = two_keys(value, ["count", "per"], ALLOWED_LIMIT)?;
    let count = (integer(count).filter(|n| (1..=1_000_000).contains(n)))
        .ok_or_else(|| bad("count", count, "is out of range", ALLOWED_LIMIT))?;
    let window = (per.as_str()).and_then(|p| WINDOW_NAMES.iter().position(|n| *n == p));
    let window =
        window.ok_or_else(|| bad("per", per, "is not a measured window", ALLOWED_LIMIT))?;
    let count = count as u32;
    Ok(MessageLimit { count, window })
}

const ALLOWED_TUNNEL: &str = "expected the local TLS tunnel's plaintext address as IP:PORT, \
     such as \"127.0.0.1:7001\" or \"[::1]:7001\" (a loopback address: the gateway's plaintext \
     leg is read on loopback; a port from 1 to 65535), or \"auto\" (found at run time: the \
     loopback listener of the stunnel process owning the target's sessions)";

/// `targets[].tls_tunnel`: the address the gateway connects to in plaintext (the tunnel's
/// accepting socket), on loopback, or `"auto"`.
fn parse_tls_tunnel(value: &Value) -> Result<TlsTunnel, String> {
    let text = text(value, ALLOWED_TUNNEL)?.trim();
    if text.eq_ignore_ascii_case("auto") {
        return Ok(TlsTunnel::Auto);
    }
    let addr = text.parse::<SocketAddr>();
    let addr = addr.map_err(|_| format!("not IP:PORT; {ALLOWED_TUNNEL}"))?;
    let (ip, port) = (addr.ip().to_canonical(), addr.port());
    let what = match (ip.is_loopback(), port) {
        (false, _) => format!("{} is not a loopback address", addr.ip()),
        (true, 0) => "port 0 is not a port the tunnel listens on".to_owned(),
        (true, _) => return Ok(TlsTunnel::At(SocketAddr::new(ip, port))),
    };
    Err(format!("{what}; {ALLOWED_TUNNEL}"))
}

/// `schedule_grace`: like an interval, but zero is allowed (only ends outside a window are
/// planned).
fn parse_grace(value: &Value) -> Result<Duration, String> {
    const ALLOWED: &str = "expected a duration from 0 to 24h: whole seconds (300) or a \
                           humantime string (\"5m\", \"90s\")";
    match duration(value) {
        Ok(grace) if grace <= defaults::MAX_INTERVAL => Ok(grace),
        _ => Err(ALLOWED.to_owned()),
    }
}

fn parse_glob(value: &Value) -> Result<String, String> {
    const ALLOWED: &str = "expected a file path or glob pattern, e.g. \
         \"/var/log/quickfix/*.messages.log\"";
    let text = text(value, ALLOWED)?;
    let pattern =
        glob::Pattern::new(text).map_err(|e| format!("is not a valid glob ({e}); {ALLOWED}"));
    pattern.map(|_| text.to_owned())
}

fn parse_log_level(value: &Value) -> Result<String, String> {
    let text = text(value, ALLOWED_LEVEL)?;
    // The binary builds its filter from this string; checking here turns a typo into a usage
    // error instead of a silent fallback.
    let filter = tracing_subscriber::EnvFilter::builder().parse(text);
    filter.map_err(|e| format!("{e}; {ALLOWED_LEVEL}"))?;
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
            let entries = dict.iter().map(|(k, v)| format!("{k} = {}", render(v)));
            format!("{{{}}}", entries.collect::<Vec<_>>().join(", "))
        }
        Value::Array(_, items) => format!(
            "[{}]",
            items.iter().map(render).collect::<Vec<_>>().join(", ")
        ),
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
