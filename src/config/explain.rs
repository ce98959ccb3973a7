//! `fix-monitor config`: the effective configuration as TOML, each value followed by where it
//! came from. The output is itself a valid config file that loads to the same settings, so an
//! operator can start a file from it.

use std::fmt::Write;

use super::raw::{self, quote};
use super::{ConfigFile, Loaded, Origin, OtlpProtocol};

/// Comments start at this column at least, so that they line up in the common case.
const COMMENT_COLUMN: usize = 34;

pub(super) fn explain(loaded: &Loaded) -> String {
    let s = &loaded.settings;
    let mut out = String::new();
    out.push_str("# fix-monitor effective configuration.\n");
    out.push_str(
        "# Layers, lowest first: default < OTEL_* variables < config file < FIX_MONITOR_* and \
         DOWNSTREAM_* variables < flags; each value's comment says which one set it.\n",
    );
    match &loaded.config_file {
        ConfigFile::Read(path) => {
            let _ = writeln!(out, "# Config file: {}", path.display());
        }
        ConfigFile::Absent(path) => {
            let _ = writeln!(out, "# Config file: {} (absent, skipped)", path.display());
        }
    }
    for (name, value) in &loaded.resource_vars {
        let _ = writeln!(
            out,
            "# {name}={} (the SDK reads it: the resource)",
            quote(value)
        );
    }

    let mut lines = Lines { loaded, out };
    for (i, t) in s.targets.iter().enumerate() {
        let key = |field: &str| format!("targets[{i}].{field}");
        lines.header("[[targets]]");
        lines.value("name", &quote(&t.name), &key("name"));
        let single = t.net.prefix_len() == t.net.max_prefix_len();
        let address = if single {
            t.net.addr().to_string()
        } else {
            t.net.to_string()
        };
        lines.value("address", &quote(&address), &key("address"));
        match t.port {
            Some(port) => lines.value("port", &port.to_string(), &key("port")),
            None => lines.absent("port", "any port", &key("port")),
        }
        match t.local_ports {
            Some(r) => lines.value(
                "local_ports",
                &format!("[{}, {}]", r.start, r.end),
                &key("local_ports"),
            ),
            None => lines.absent("local_ports", "any local port", &key("local_ports")),
        }
    }

    lines.header("[poll]");
    let interval = humantime::format_duration(s.poll.interval).to_string();
    lines.value("interval", &quote(&interval), "poll.interval");
    lines.value("source", &quote(s.poll.source.as_str()), "poll.source");
    let reconcile = humantime::format_duration(s.poll.reconcile_interval).to_string();
    lines.value(
        "reconcile_interval",
        &quote(&reconcile),
        "poll.reconcile_interval",
    );

    lines.header("[prometheus]");
    lines.value(
        "enabled",
        &s.prometheus.enabled.to_string(),
        "prometheus.enabled",
    );
    let listen = s.prometheus.listen.to_string();
    lines.value("listen", &quote(&listen), "prometheus.listen");

    lines.header("[log]");
    lines.value("format", &quote(s.log.format.as_str()), "log.format");
    lines.value("level", &quote(&s.log.level), "log.level");

    let o = &s.otlp;
    lines.header("[otlp]");
    lines.value("enabled", &o.enabled.to_string(), "otlp.enabled");
    lines.value("endpoint", &quote(&o.endpoint), "otlp.endpoint");
    if o.url != o.endpoint {
        let _ = writeln!(lines.out, "# (exports go to {})", o.url);
    } else if o.protocol == OtlpProtocol::HttpProtobuf
        && raw::http_export_url(&o.endpoint, false) != o.url
    {
        // Only the signal-specific variable gives a full URL; a file's endpoint is a base.
        let _ = writeln!(
            lines.out,
            "# (the full export URL, used as is; as a file's endpoint it would get /v1/metrics \
             appended)"
        );
    }
    lines.value("protocol", &quote(o.protocol.as_str()), "otlp.protocol");
    let interval = humantime::format_duration(o.interval).to_string();
    lines.value("interval", &quote(&interval), "otlp.interval");
    let timeout = humantime::format_duration(o.timeout).to_string();
    lines.value("timeout", &quote(&timeout), "otlp.timeout");
    lines.value(
        "temporality",
        &quote(o.temporality.as_str()),
        "otlp.temporality",
    );

    lines.header("[otlp.headers]");
    if o.headers.is_empty() {
        lines.absent("headers", "none", "otlp.headers");
    }
    for (name, value) in &o.headers {
        let key = format!("otlp.headers.{name}");
        if is_secret(name) {
            // `fix-monitor config` output ends up in tickets and chat; credentials must not.
            lines.absent(&quote(name), "set, value not shown", &key);
        } else {
            lines.value(&quote(name), &quote(value), &key);
        }
    }

    lines.header("[otlp.tls]");
    let tls = [
        ("ca_file", &o.tls.ca_file, "the system's trust roots"),
        ("cert_file", &o.tls.cert_file, "no client certificate"),
        ("key_file", &o.tls.key_file, "no client key"),
    ];
    for (field, path, meaning) in tls {
        let key = format!("otlp.tls.{field}");
        match path {
            Some(path) => lines.value(field, &quote(&path.display().to_string()), &key),
            None => lines.absent(field, meaning, &key),
        }
    }
    lines.out
}

/// Header names whose values are credentials.
fn is_secret(name: &str) -> bool {
    const WORDS: &[&str] = &["auth", "key", "token", "secret", "password", "cookie"];
    let name = name.to_ascii_lowercase();
    WORDS.iter().any(|w| name.contains(w))
}

struct Lines<'a> {
    loaded: &'a Loaded,
    out: String,
}

impl Lines<'_> {
    fn header(&mut self, header: &str) {
        let _ = write!(self.out, "\n{header}\n");
    }

    fn value(&mut self, name: &str, value: &str, key: &str) {
        let line = format!("{name} = {value}");
        self.commented(&line, key);
    }

    /// A key that is not set; TOML has no "none", so the line is a comment.
    fn absent(&mut self, name: &str, meaning: &str, key: &str) {
        let line = format!("# {name}: {meaning}");
        self.commented(&line, key);
    }

    fn commented(&mut self, line: &str, key: &str) {
        let from = match self.loaded.origin(key) {
            // A target's name is derived from its address and port unless given.
            Some(Origin::Default) if key.ends_with(".name") => {
                "default (from address and port)".to_owned()
            }
            Some(Origin::Default) | None => "default".to_owned(),
            Some(origin) => format!("from {origin}"),
        };
        let _ = writeln!(self.out, "{line:<COMMENT_COLUMN$} # {from}");
    }
}
