//! Session events: names and attributes as built, and what the logger receives.

use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use opentelemetry::logs::{AnyValue, LoggerProvider as _};
use opentelemetry::Key;
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::logs::{LogBatch, LogExporter, SdkLoggerProvider};

use super::*;
use crate::tracker::{ConnKey, Timestamp};

#[test]
fn event_names_are_the_documented_ones_and_distinct() {
    let names: std::collections::BTreeSet<_> = EventName::ALL.iter().map(|n| n.as_str()).collect();
    assert_eq!(names.len(), EventName::ALL.len());
    assert!(names.iter().all(|n| n.starts_with("fix.session.")));
}

/// (event name, attributes as text) of every record the exporter got.
type Seen = Arc<Mutex<Vec<(String, Vec<(String, String)>)>>>;

#[derive(Debug, Clone, Default)]
struct Recorder(Seen);

impl LogExporter for Recorder {
    async fn export(&self, batch: LogBatch<'_>) -> OTelSdkResult {
        let mut seen = self.0.lock().unwrap();
        for (r, _) in batch.iter() {
            let attrs = r
                .attributes_iter()
                .map(|(k, v): &(Key, AnyValue)| (k.to_string(), format!("{v:?}")))
                .collect();
            seen.push((r.event_name().unwrap_or_default().to_owned(), attrs));
        }
        Ok(())
    }
}

fn connection() -> crate::tracker::Connection {
    let mut tracker = crate::tracker::Tracker::new(crate::target::Targets::new(vec![
        crate::target::Target::test("10.0.0.5/32", None, None),
    ]));
    let key = ConnKey {
        local: "10.0.0.1:5001".parse().unwrap(),
        remote: "10.0.0.5:9876".parse().unwrap(),
        id: 7,
    };
    let mut out = Vec::new();
    tracker.event(
        &crate::tracker::SocketEvent {
            at: Timestamp::now(),
            kind: crate::tracker::SocketEventKind::Opened,
            id: key.id,
            local: key.local,
            remote: key.remote,
            partial: false,
            established: Some(true),
            info: None,
            closed_by: None,
            process: None,
            cause: None,
        },
        &mut out,
    );
    match out.pop() {
        Some(crate::tracker::Event::Opened(c)) => c,
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_close_carries_the_session_its_lifetime_and_who_hung_up_as_typed_attributes() {
    let seen = Seen::default();
    let provider = SdkLoggerProvider::builder()
        .with_simple_exporter(Recorder(seen.clone()))
        .build();
    let sink = SessionEvents::new(LogFormat::Text, Some(provider.logger(SCOPE)));
    let c = connection();
    let verdict = crate::ends::Verdict {
        cause: crate::ends::Cause::LogoutByThem,
        evidence: "Logout from them first".into(),
    };
    let info = TcpCounters {
        bytes_acked: Some(10),
        bytes_received: 20,
        retransmits: 1,
        bytes_sent: None,
    };
    let close = Close {
        at: Some(SystemTime::now()),
        duration: Some(Duration::from_millis(1500)),
        info: Some(&info),
        by: Some(ClosedBy::Remote),
        end: Some(&verdict),
        ..Close::default()
    };
    let event = closed((c.key.local, c.key.remote), "venue", close);
    assert_eq!(event.get(attrs::DURATION), Some(&Value::Float(1.5)));
    sink.emit(&opened(&c, "venue", None));
    sink.emit(&event);
    let seen = seen.lock().unwrap();
    let names: Vec<_> = seen.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, ["fix.session.opened", "fix.session.closed"]);
    let attrs: std::collections::BTreeMap<_, _> = seen[1].1.iter().cloned().collect();
    assert_eq!(attrs["fix.target"], "String(Owned(\"venue\"))");
    assert_eq!(attrs["network.peer.address"], "String(Owned(\"10.0.0.5\"))");
    assert_eq!(attrs["network.peer.port"], "Int(9876)");
    assert_eq!(attrs["network.local.port"], "Int(5001)");
    assert_eq!(attrs["fix.session.duration"], "Double(1.5)");
    assert_eq!(attrs["fix.close.by"], "String(Owned(\"remote\"))");
    assert_eq!(attrs["fix.tcp.bytes_received"], "Int(20)");
    assert_eq!(attrs["fix.end.cause"], "String(Owned(\"logout_by_them\"))");
    assert!(!attrs.contains_key("process.pid"), "unknown: left out");
}

#[test]
fn the_json_line_has_the_event_name_the_message_and_the_attributes() {
    let c = connection();
    let line = opened(&c, "venue", None).json();
    assert_eq!(line["event.name"], "fix.session.opened");
    assert_eq!(line["message"], "connection opened");
    assert_eq!(line["level"], "INFO");
    assert_eq!(line["network.peer.port"], 9876);
    assert_eq!(line["fix.target"], "venue");
    assert_eq!(line["fix.session.preexisting"], false);
    assert!(line["timestamp"].as_str().unwrap().ends_with('Z'));
}
