//! `fix-monitor config`: the effective configuration as TOML, each value followed by where it
//! came from. The output is itself a valid config file that loads to the same settings, so an
//! operator can start a file from it. It walks the settings serialized to a figment tree (each
//! check's `serialize` writes its value as the file takes it; sections come in key order),
//! taking each value's origin from `Loaded::origin`: a new key needs nothing here.

use std::fmt::Write;

use figment::value::{Dict, Value};

use super::raw::{self, quote, render};
use super::{ConfigFile, Loaded, Origin, OtlpProtocol};

/// Comments start at this column at least, so that they line up in the common case.
const COMMENT_COLUMN: usize = 34;

const HEADER: &str = "# fix-monitor effective configuration.\n# Layers, lowest first: default < \
     OTEL_* variables < config file < FIX_MONITOR_* and DOWNSTREAM_* variables < flags; each \
     value's comment says which one set it.\n";

pub(super) fn explain(loaded: &Loaded) -> String {
    let mut out = HEADER.to_owned();
    let (path, absent) = match &loaded.config_file {
        ConfigFile::Read(path) => (path, ""),
        ConfigFile::Absent(path) => (path, " (absent, skipped)"),
    };
    let _ = writeln!(out, "# Config file: {}{absent}", path.display());
    for (name, value) in &loaded.resource_vars {
        let value = quote(value);
        let _ = writeln!(out, "# {name}={value} (the SDK reads it: the resource)");
    }

    let Ok(Value::Dict(_, top)) = Value::serialize(&loaded.settings) else {
        unreachable!("settings serialize to a table")
    };
    write_table(loaded, &mut out, "", "", &top);
    out
}

/// What an unset optional key means.
fn absent_meaning(key: &str) -> &'static str {
    match key.rsplit('.').next().unwrap_or_default() {
        "port" => "any port",
        "local_ports" => "any local port",
        "ca_file" => "the system's trust roots",
        "cert_file" => "no client certificate",
        "key_file" => "no client key",
        "heartbeat" => "none",
        "stale_after" => "no staleness judged (no heartbeat either)",
        "logon_lockout" => "no lockout threshold (logon attempts counted over 60s)",
        "schedule" => "always expected up",
        "message_limit" => "no throttle (peaks reported, no utilization)",
        "tls_tunnel" => "no tunnel (FIX is read on the target's own sessions)",
        "timezone" => "UTC",
        "days" => "every day",
        "dir" => "no state kept across restarts",
        "health_interval" => "every poll",
        "web_config" => "plain HTTP, no auth",
        _ => "not set",
    }
}

/// Tables whose keys the user names (quoted in the output, and values that look like
/// credentials masked).
const USER_KEYED: &[&str] = &["otlp.headers"];

/// A comment under a value, where the value alone would mislead.
fn note(loaded: &Loaded, key: &str) -> Option<String> {
    let o = &loaded.settings.otlp;
    let http = o.protocol == OtlpProtocol::HttpProtobuf;
    match key == "otlp.endpoint" {
        true if o.url != o.endpoint => Some(format!("# (exports go to {})", o.url)),
        // Only the signal-specific variable gives a full URL; a file's endpoint is a base.
        true if http && raw::http_export_url(&o.endpoint, false) != o.url => Some(FULL_URL.into()),
        _ => None,
    }
}

const FULL_URL: &str =
    "# (the full export URL, used as is; as a file's endpoint it would get /v1/metrics appended)";

/// Header names whose values are credentials.
fn is_secret(name: &str) -> bool {
    const WORDS: &[&str] = &["auth", "key", "token", "secret", "password", "cookie"];
    let name = name.to_ascii_lowercase();
    WORDS.iter().any(|w| name.contains(w))
}

/// The leaves of a table, then its sub-tables, then its lists of tables. `key` names values
/// for their origins (`targets[0]`), `header` for TOML (`targets`).
fn write_table(loaded: &Loaded, out: &mut String, key: &str, header: &str, table: &Dict) {
    let join = |base: &str, name: &str| match base {
        "" => name.to_owned(),
        base => format!("{base}.{name}"),
    };
    let user_keyed = USER_KEYED.contains(&key);
    if table.is_empty() {
        let name = header.rsplit('.').next().unwrap_or_default();
        write_line(loaded, out, format!("# {name}: none"), key);
    }
    for (name, value) in table {
        let key = join(key, name);
        let shown = match user_keyed {
            true => quote(name),
            false => name.clone(),
        };
        let line = match value {
            Value::Dict(..) => continue,
            Value::Array(_, items) if items.iter().any(|v| v.as_dict().is_some()) => continue,
            Value::Empty(..) => format!("# {name}: {}", absent_meaning(&key)),
            // `fix-monitor config` output ends up in tickets and chat; credentials must not.
            _ if user_keyed && is_secret(name) => format!("# {shown}: set, value not shown"),
            _ => format!("{shown} = {}", render(value)),
        };
        write_line(loaded, out, line, &key);
        if let Some(note) = note(loaded, &key) {
            let _ = writeln!(out, "{note}");
        }
    }
    for (name, value) in table {
        let (key, header) = (join(key, name), join(header, name));
        match value {
            Value::Dict(_, sub) => {
                let _ = write!(out, "\n[{header}]\n");
                write_table(loaded, out, &key, &header, sub);
            }
            Value::Array(_, items) => {
                for (i, item) in items.iter().enumerate() {
                    if let Value::Dict(_, sub) = item {
                        let _ = write!(out, "\n[[{header}]]\n");
                        write_table(loaded, out, &format!("{key}[{i}]"), &header, sub);
                    }
                }
            }
            _ => {}
        }
    }
}

/// A line with its value's origin in a comment; TOML has no "none", so an unset key's line
/// is a comment itself.
fn write_line(loaded: &Loaded, out: &mut String, line: String, key: &str) {
    let from = match loaded.origin(key) {
        Some(origin) if *origin != Origin::Default => format!("from {origin}"),
        // A target's name is derived from its address and port unless given.
        _ if key.ends_with(".name") => "default (from address and port)".to_owned(),
        _ if key.ends_with(".stale_after") => "default (twice the heartbeat)".to_owned(),
        _ => "default".to_owned(),
    };
    let _ = writeln!(out, "{line:<COMMENT_COLUMN$} # {from}");
}
