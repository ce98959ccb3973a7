//! Session events as OpenTelemetry log records: the one door every producer of a session event
//! goes through. A producer builds a typed [`SessionEvent`] (an [`EventName`] from the fixed
//! vocabulary below, a severity, a one-line summary and attributes named by [`attrs`]) and hands
//! it to [`SessionEvents::emit`], which
//! - emits it as an OTel log record (event name, severity, body, attributes, the event's
//!   time) through the logger provider that `export::logs` builds when `[otlp] logs` is on;
//! - with `[log] format = "json"`, writes it to stderr as one JSON object: `event.name`,
//!   `message` and the same attributes. In text format the producer keeps writing its human
//!   line (`SessionEvents::json` tells it which), so the text log reads as before.
//!
//! # Producers
//! - `poller`: `fix.session.opened` / `fix.session.closed` from the tracker's events
//!   ([`opened`], [`closed`], [`short_lived`]) and `fix.session.stale` / `.recovered` from the
//!   health book ([`health`]). [`closed`] is the one place a close's attributes are built: a
//!   close's end cause goes there as [`attrs::END_CAUSE`].
//! - The FIX layer: `fix.session.logon`, `.logon_refused`, `.logout`, `.sequence_gap`,
//!   `.reject`. The FIX tracker (`fix-monitor-protocol`, `tracker.rs`) is pure and sits below
//!   this crate, so it cannot call this; the sidecar's FIX layer (`fix::monitor`'s worker) is
//!   handed a clone of [`SessionEvents`] and builds them with [`SessionEvent::fix`] (the
//!   target, the peer and local ports, the comp ids, then the event's own attributes). Today
//!   `fix::events` derives them from the growth of each FIX session's counters per round; a
//!   tracker `Event` for each can replace that there, calling the same function.
//!
//! # Why the Logs API and not the tracing bridge
//! `opentelemetry-appender-tracing` would turn every `tracing` event of the process into a log
//! record (start-up lines, export warnings), with attribute types taken from how a field was
//! recorded (`%addr` is a string, so ports formatted for people would be strings), and the
//! text log would have to carry the dotted OTel keys. Emitting through `Logger::emit` with
//! `set_event_name` gives exactly these event names, typed attributes (ports and pids as
//! integers, durations as seconds), and leaves the human log as it was.

use std::io::Write;
use std::net::SocketAddr;
use std::time::{Duration, SystemTime};

use opentelemetry::logs::{AnyValue, LogRecord as _, Logger as _, Severity};
use opentelemetry_sdk::logs::SdkLogger;

use crate::config::LogFormat;

/// The event names: a fixed vocabulary (OpenTelemetry has no FIX conventions; these are ours,
/// documented in dashboards/README.md, "Session events").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EventName {
    Opened,
    Closed,
    Stale,
    Recovered,
    Logon,
    LogonRefused,
    Logout,
    SequenceGap,
    Reject,
}

impl EventName {
    pub const ALL: [EventName; 9] = [
        EventName::Opened,
        EventName::Closed,
        EventName::Stale,
        EventName::Recovered,
        EventName::Logon,
        EventName::LogonRefused,
        EventName::Logout,
        EventName::SequenceGap,
        EventName::Reject,
    ];

    pub const fn as_str(self) -> &'static str {
        match self {
            EventName::Opened => "fix.session.opened",
            EventName::Closed => "fix.session.closed",
            EventName::Stale => "fix.session.stale",
            EventName::Recovered => "fix.session.recovered",
            EventName::Logon => "fix.session.logon",
            EventName::LogonRefused => "fix.session.logon_refused",
            EventName::Logout => "fix.session.logout",
            EventName::SequenceGap => "fix.session.sequence_gap",
            EventName::Reject => "fix.session.reject",
        }
    }
}

/// Attribute keys. The `network.*` and `process.*` ones are OpenTelemetry's semantic
/// conventions; the `fix.*` ones are ours.
pub mod attrs {
    /// The target's name (the `target` label of the metrics).
    pub const TARGET: &str = "fix.target";
    pub const PEER_ADDRESS: &str = "network.peer.address";
    pub const PEER_PORT: &str = "network.peer.port";
    pub const LOCAL_ADDRESS: &str = "network.local.address";
    pub const LOCAL_PORT: &str = "network.local.port";
    pub const SENDER_COMP_ID: &str = "fix.sender_comp_id";
    pub const TARGET_COMP_ID: &str = "fix.target_comp_id";
    pub const PID: &str = "process.pid";
    pub const COMMAND: &str = "process.command";
    /// Open at start: its real start is earlier.
    pub const PREEXISTING: &str = "fix.session.preexisting";
    /// Opened and closed between two polls: no lifetime.
    pub const SHORT_LIVED: &str = "fix.session.short_lived";
    /// Lifetime, seconds (a double).
    pub const DURATION: &str = "fix.session.duration";
    /// Time without data received, seconds (stale: so far; recovered: the whole silence).
    pub const SILENCE: &str = "fix.session.silence";
    pub const BYTES_ACKED: &str = "fix.tcp.bytes_acked";
    pub const BYTES_RECEIVED: &str = "fix.tcp.bytes_received";
    pub const RETRANSMITS: &str = "fix.tcp.retransmits";
    /// Who hung up: `local`, `remote` (where the source saw it).
    pub const CLOSED_BY: &str = "fix.close.by";
    /// The kernel's reason in words (eBPF mode: a RST and its reason, the socket error).
    pub const KERNEL_CAUSE: &str = "fix.close.kernel_cause";
    /// Why the session ended (reserved: the end causes being added in parallel).
    pub const END_CAUSE: &str = "fix.end.cause";
    /// What picked the end's cause, in words.
    pub const END_EVIDENCE: &str = "fix.end.evidence";
    pub const LOGOUT_TEXT: &str = "fix.logout.text";
    /// Who sent the first Logout: `us` or `them`.
    pub const LOGOUT_INITIATOR: &str = "fix.logout.initiator";
    /// Messages missing in a gap (the FIX layer's count grew by this much).
    pub const GAPS: &str = "fix.sequence_gap.count";
    /// Which way the messages went: `in` (to us) or `out` (from us).
    pub const DIRECTION: &str = "fix.direction";
    /// `session` (MsgType 3) or `business` (MsgType j).
    pub const REJECT_KIND: &str = "fix.reject.kind";
    pub const REJECTS: &str = "fix.reject.count";
}

/// An attribute's value: the OTel types the events use.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Str(String),
    Int(i64),
    Float(f64),
    Bool(bool),
}

impl From<&str> for Value {
    fn from(v: &str) -> Value {
        Value::Str(v.to_owned())
    }
}
impl From<String> for Value {
    fn from(v: String) -> Value {
        Value::Str(v)
    }
}
impl From<u64> for Value {
    fn from(v: u64) -> Value {
        Value::Int(i64::try_from(v).unwrap_or(i64::MAX))
    }
}
impl From<u32> for Value {
    fn from(v: u32) -> Value {
        Value::Int(v.into())
    }
}
impl From<u16> for Value {
    fn from(v: u16) -> Value {
        Value::Int(v.into())
    }
}
impl From<bool> for Value {
    fn from(v: bool) -> Value {
        Value::Bool(v)
    }
}
impl From<Duration> for Value {
    /// Seconds, as a double.
    fn from(v: Duration) -> Value {
        Value::Float(v.as_secs_f64())
    }
}

impl Value {
    fn otel(&self) -> AnyValue {
        match self {
            Value::Str(s) => AnyValue::from(s.clone()),
            Value::Int(i) => AnyValue::Int(*i),
            Value::Float(f) => AnyValue::Double(*f),
            Value::Bool(b) => AnyValue::Boolean(*b),
        }
    }

    fn json(&self) -> serde_json::Value {
        match self {
            Value::Str(s) => s.clone().into(),
            Value::Int(i) => (*i).into(),
            Value::Float(f) => (*f).into(),
            Value::Bool(b) => (*b).into(),
        }
    }
}

/// One session event, typed: what every producer hands to [`SessionEvents::emit`].
#[derive(Debug, Clone, PartialEq)]
pub struct SessionEvent {
    pub name: EventName,
    /// `Warn` for what needs a look (stale, refused logon, gap, reject), else `Info`.
    pub warn: bool,
    /// The human summary, the record's body (`connection opened`, as the text log says).
    pub message: &'static str,
    /// When it happened (the tracker's or the FIX layer's time of the event).
    pub at: SystemTime,
    /// In the order added; keys from [`attrs`].
    pub attributes: Vec<(&'static str, Value)>,
}

impl SessionEvent {
    /// An event of the session `local` -> `remote` of `target`, with the common attributes.
    pub fn new(
        name: EventName,
        message: &'static str,
        at: SystemTime,
        target: &str,
        (local, remote): (SocketAddr, SocketAddr),
    ) -> SessionEvent {
        SessionEvent {
            name,
            warn: false,
            message,
            at,
            attributes: Vec::new(),
        }
        .with(attrs::TARGET, target)
        .with(attrs::PEER_ADDRESS, remote.ip().to_string())
        .with(attrs::PEER_PORT, remote.port())
        .with(attrs::LOCAL_ADDRESS, local.ip().to_string())
        .with(attrs::LOCAL_PORT, local.port())
    }

    /// A FIX layer event: the common attributes, and the comp ids where known. The FIX layer
    /// knows the peer and local ports of a wire session; `(local, remote)` is `None` for a
    /// session read from an engine log, which has no socket.
    pub fn fix(
        name: EventName,
        message: &'static str,
        at: SystemTime,
        target: &str,
        sockets: Option<(SocketAddr, SocketAddr)>,
        (sender, target_comp): (Option<&str>, Option<&str>),
    ) -> SessionEvent {
        let event = match sockets {
            Some(s) => SessionEvent::new(name, message, at, target, s),
            None => SessionEvent {
                name,
                warn: false,
                message,
                at,
                attributes: Vec::new(),
            }
            .with(attrs::TARGET, target),
        };
        event
            .with_opt(attrs::SENDER_COMP_ID, sender)
            .with_opt(attrs::TARGET_COMP_ID, target_comp)
    }

    pub fn with(mut self, key: &'static str, value: impl Into<Value>) -> SessionEvent {
        self.attributes.push((key, value.into()));
        self
    }

    /// Adds the attribute only when the value is known.
    pub fn with_opt<V: Into<Value>>(self, key: &'static str, value: Option<V>) -> SessionEvent {
        match value {
            Some(v) => self.with(key, v),
            None => self,
        }
    }

    pub fn warning(mut self) -> SessionEvent {
        self.warn = true;
        self
    }

    /// The value of `key`, if set.
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.attributes
            .iter()
            .find_map(|(k, v)| (*k == key).then_some(v))
    }

    /// The JSON line's object: time, level, `event.name`, `message`, then the attributes.
    pub fn json(&self) -> serde_json::Value {
        let mut o = serde_json::Map::new();
        let at = chrono::DateTime::<chrono::Utc>::from(self.at);
        o.insert(
            "timestamp".into(),
            at.to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
                .into(),
        );
        o.insert(
            "level".into(),
            if self.warn { "WARN" } else { "INFO" }.into(),
        );
        o.insert("event.name".into(), self.name.as_str().into());
        o.insert("message".into(), self.message.into());
        for (k, v) in &self.attributes {
            o.insert((*k).to_owned(), v.json());
        }
        o.insert("target".into(), module_path!().into());
        serde_json::Value::Object(o)
    }
}

/// Where session events go: an OTel logger (when `[otlp] logs` is on) and, in JSON format,
/// stderr. Cheap to clone: every producer holds one.
#[derive(Clone, Default)]
pub struct SessionEvents {
    json: bool,
    logger: Option<SdkLogger>,
}

impl std::fmt::Debug for SessionEvents {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SessionEvents")
            .field("json", &self.json)
            .field("otel", &self.logger.is_some())
            .finish()
    }
}

/// The instrumentation scope of the records.
pub const SCOPE: &str = "fix-monitor.session";

impl SessionEvents {
    /// `logger`: from the logger provider, when OTLP logs are on.
    pub fn new(format: LogFormat, logger: Option<SdkLogger>) -> SessionEvents {
        SessionEvents {
            json: format == LogFormat::Json,
            logger,
        }
    }

    /// Whether events are written as JSON lines here: the producer then writes no human line.
    pub fn json(&self) -> bool {
        self.json
    }

    pub fn emit(&self, event: &SessionEvent) {
        if let Some(logger) = &self.logger {
            let mut record = logger.create_log_record();
            record.set_event_name(event.name.as_str());
            record.set_timestamp(event.at);
            record.set_observed_timestamp(SystemTime::now());
            let (number, text) = match event.warn {
                true => (Severity::Warn, "WARN"),
                false => (Severity::Info, "INFO"),
            };
            record.set_severity_number(number);
            record.set_severity_text(text);
            record.set_body(AnyValue::from(event.message));
            record.add_attributes(event.attributes.iter().map(|(k, v)| (*k, v.otel())));
            logger.emit(record);
        }
        if self.json && enabled(event.warn) {
            let mut line = event.json().to_string();
            line.push('\n');
            // One write of the whole line: it does not interleave with tracing's lines.
            let _ = std::io::stderr().lock().write_all(line.as_bytes());
        }
    }
}

/// Whether the log level lets the event's line through (`[log] level`).
fn enabled(warn: bool) -> bool {
    match warn {
        true => tracing::enabled!(tracing::Level::WARN),
        false => tracing::enabled!(tracing::Level::INFO),
    }
}

// ---- The sidecar's own events, built from the tracker's and the health book's. ----

use crate::ends::Verdict;
use crate::source::{ClosedBy, KernelCause, Process};
use crate::tracker::{Connection, TcpCounters};

fn with_process(e: SessionEvent, p: Option<&Process>) -> SessionEvent {
    e.with_opt(attrs::PID, p.map(|p| p.pid))
        .with_opt(attrs::COMMAND, p.map(|p| p.comm.to_string()))
}

fn with_counters(e: SessionEvent, info: Option<&TcpCounters>) -> SessionEvent {
    e.with_opt(attrs::BYTES_ACKED, info.and_then(|i| i.bytes_acked))
        .with_opt(attrs::BYTES_RECEIVED, info.map(|i| i.bytes_received))
        .with_opt(attrs::RETRANSMITS, info.map(|i| i.retransmits))
}

/// `fix.session.opened`.
pub fn opened(c: &Connection, target: &str, process: Option<&Process>) -> SessionEvent {
    let e = SessionEvent::new(
        EventName::Opened,
        "connection opened",
        c.since.wall,
        target,
        (c.key.local, c.key.remote),
    )
    .with(attrs::PREEXISTING, c.preexisting);
    with_process(e, process)
}

/// What is known of a close beyond the session's addresses.
#[derive(Debug, Clone, Copy, Default)]
pub struct Close<'a> {
    pub at: Option<SystemTime>,
    pub duration: Option<Duration>,
    pub info: Option<&'a TcpCounters>,
    pub by: Option<ClosedBy>,
    pub kernel_cause: Option<&'a KernelCause>,
    pub process: Option<&'a Process>,
    /// Why it ended (`crate::ends`).
    pub end: Option<&'a Verdict>,
}

/// `fix.session.closed`: the one place a close's attributes are built, emitted when its end is
/// judged (with `fix.end.cause` and `fix.end.evidence`).
pub fn closed(addrs: (SocketAddr, SocketAddr), target: &str, close: Close<'_>) -> SessionEvent {
    let e = SessionEvent::new(
        EventName::Closed,
        "connection closed",
        close.at.unwrap_or_else(SystemTime::now),
        target,
        addrs,
    )
    .with_opt(attrs::DURATION, close.duration)
    .with_opt(attrs::CLOSED_BY, close.by.as_ref().map(ClosedBy::as_str))
    .with_opt(
        attrs::KERNEL_CAUSE,
        close.kernel_cause.map(|k| k.to_string()),
    )
    .with_opt(attrs::END_CAUSE, close.end.map(|v| v.cause.as_str()))
    .with_opt(attrs::END_EVIDENCE, close.end.map(|v| v.evidence.clone()));
    with_process(with_counters(e, close.info), close.process)
}

/// A session opened and closed between two polls: an open and a close, both marked
/// `fix.session.short_lived`, so that opens and closes add up as the counters do.
pub fn short_lived(
    addrs: (SocketAddr, SocketAddr),
    target: &str,
    at: SystemTime,
    close: Close<'_>,
) -> [SessionEvent; 2] {
    let open = SessionEvent::new(EventName::Opened, "connection opened", at, target, addrs)
        .with(attrs::SHORT_LIVED, true);
    let open = with_process(open, close.process);
    let close = closed(
        addrs,
        target,
        Close {
            at: Some(at),
            ..close
        },
    )
    .with(attrs::SHORT_LIVED, true);
    [open, close]
}

/// `fix.session.stale` and `fix.session.recovered`.
pub fn health(e: &crate::health::HealthEvent, names: &[std::sync::Arc<str>]) -> SessionEvent {
    use crate::health::HealthEvent;
    let (name, message, target, local, remote, silence) = match e {
        HealthEvent::Stale {
            target,
            local,
            remote,
            silence,
        } => (
            EventName::Stale,
            "session stale: no data received",
            target,
            local,
            remote,
            silence,
        ),
        HealthEvent::Recovered {
            target,
            local,
            remote,
            silence,
        } => (
            EventName::Recovered,
            "session recovered: data received again",
            target,
            local,
            remote,
            silence,
        ),
    };
    let event = SessionEvent::new(
        name,
        message,
        SystemTime::now(),
        &names[*target],
        (*local, *remote),
    )
    .with(attrs::SILENCE, *silence);
    match name {
        EventName::Stale => event.warning(),
        _ => event,
    }
}

#[cfg(test)]
mod tests;
