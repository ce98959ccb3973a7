//! The live view's FIX sessions panel: one row per FIX session the FIX layer tracks (logged on
//! or not, HeartBtInt, inbound silence, last MsgSeqNum each way, gaps, rejects received, order
//! ack latency p50 and last, the last Logout's text). Pure: a published [`FixState`] in, lines
//! out; nothing when the FIX layer is off.

use super::view::table;
use crate::fix::monitor::{FixSessionJson, FixState};
use crate::fix::tracker::LogonState;

/// The panel's lines for `state`, at most `max_rows` session rows (the rest summed up in one
/// line), followed by a blank line; empty when the FIX layer is off.
pub fn lines(state: Option<&FixState>, max_rows: usize) -> Vec<String> {
    let Some(state) = state.filter(|s| s.enabled) else {
        return Vec::new();
    };
    let on = state.sessions.iter().filter(|s| s.logged_on).count();
    let source = match (
        state.capture,
        state.capture_error.is_some(),
        !state.logs.is_empty(),
    ) {
        (true, false, true) => "wire and log",
        (true, false, false) => "wire",
        (_, _, true) => "log",
        _ => "none",
    };
    let mut out = vec![format!(
        "FIX SESSIONS ({}, {on} logged on; from the {source}){}",
        state.sessions.len(),
        match &state.capture_error {
            Some(_) => "   capture failed: see /sessions (capture_error)",
            None => "",
        }
    )];
    let mut rows = vec![[
        "SESSION",
        "TARGET",
        "STATE",
        "HB",
        "SILENCE IN",
        "SEQ IN",
        "SEQ OUT",
        "GAPS",
        "REJECTS",
        "ACK P50",
        "ACK LAST",
        "LAST LOGOUT",
    ]
    .iter()
    .map(|s| (*s).to_owned())
    .collect::<Vec<_>>()];
    let shown = if state.sessions.len() > max_rows {
        max_rows.saturating_sub(1)
    } else {
        max_rows
    };
    rows.extend(state.sessions.iter().take(shown).map(row));
    out.extend(table(
        &rows,
        &[
            false, false, false, true, true, true, true, true, true, true, true, false,
        ],
    ));
    if state.sessions.is_empty() {
        out.push("(no FIX message seen yet)".to_owned());
    } else if state.sessions.len() > shown {
        out.push(format!("... and {} more", state.sessions.len() - shown));
    }
    out.push(String::new());
    out
}

/// One session's cells.
pub fn row(s: &FixSessionJson) -> Vec<String> {
    let dash = || "-".to_owned();
    vec![
        s.session.clone(),
        s.target.clone().unwrap_or_else(dash),
        match s.state {
            LogonState::LoggedOn => "logged on",
            LogonState::LogonSent { .. } => "logon sent",
            LogonState::LogoutSent { .. } => "logging out",
            LogonState::LoggedOut => "logged out",
        }
        .to_owned(),
        s.heartbeat_interval_seconds
            .map_or_else(dash, |h| format!("{h}s")),
        s.inbound
            .silence_seconds
            .map_or_else(dash, |x| format!("{x:.1}s")),
        s.inbound
            .next_seq
            .map_or_else(dash, |n| n.saturating_sub(1).to_string()),
        s.outbound
            .next_seq
            .map_or_else(dash, |n| n.saturating_sub(1).to_string()),
        s.inbound.sequence_gaps.to_string(),
        (s.inbound.session_rejects + s.inbound.business_rejects).to_string(),
        s.ack_latency_p50_seconds.map_or_else(dash, seconds),
        s.ack_latency_last_seconds.map_or_else(dash, seconds),
        s.last_logout_text.clone().unwrap_or_else(dash),
    ]
}

/// A latency, in the unit that reads best: `850µs`, `12.3ms`, `1.25s`.
pub fn seconds(x: f64) -> String {
    if x < 0.001 {
        format!("{:.0}µs", x * 1e6)
    } else if x < 1.0 {
        format!("{:.1}ms", x * 1e3)
    } else {
        format!("{x:.2}s")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fix::codec::{write, Decoded, Decoder, SOH};
    use crate::fix::monitor::sessions_json;
    use crate::fix::tracker::{Direction, Limits, Origin, Tracker};
    use crate::target::Targets;
    use std::time::{Duration, SystemTime};

    /// A session fed known messages: the row says what they were.
    #[test]
    fn a_row_shows_what_the_session_did() {
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let mut tr = Tracker::new(Limits::default());
        let feed = |tr: &mut Tracker, dir: Direction, ms: u64, fields: &[(u32, &str)]| {
            let (s, t) = match dir {
                Direction::Out => ("GW", "VEN"),
                Direction::In => ("VEN", "GW"),
            };
            // MsgType first, then the CompIDs and the rest.
            let mut f: Vec<(u32, &[u8])> = vec![
                (35, fields[0].1.as_bytes()),
                (49, s.as_bytes()),
                (56, t.as_bytes()),
            ];
            f.extend(fields[1..].iter().map(|(k, v)| (*k, v.as_bytes())));
            let bytes = write("FIX.4.4", &f, SOH);
            let mut d = Decoder::new(SOH);
            d.feed(&bytes);
            let Some(Decoded::Message(m)) = d.next_message() else {
                panic!("written message reads back")
            };
            let origin = Origin {
                target: Some("venue-a"),
                tcp: None,
            };
            tr.observe(&m, dir, t0 + Duration::from_millis(ms), &origin);
        };
        feed(
            &mut tr,
            Direction::Out,
            0,
            &[(35, "A"), (34, "1"), (108, "30")],
        );
        feed(
            &mut tr,
            Direction::In,
            1,
            &[(35, "A"), (34, "1"), (108, "30")],
        );
        feed(
            &mut tr,
            Direction::Out,
            10,
            &[(35, "D"), (34, "2"), (11, "o1")],
        );
        feed(
            &mut tr,
            Direction::In,
            13,
            &[(35, "8"), (34, "2"), (11, "o1")],
        );
        feed(
            &mut tr,
            Direction::Out,
            20,
            &[(35, "D"), (34, "3"), (11, "o2")],
        );
        // A gap of two (3 and 4 missing), then the answer after 5 ms.
        feed(
            &mut tr,
            Direction::In,
            25,
            &[(35, "8"), (34, "5"), (11, "o2")],
        );
        feed(
            &mut tr,
            Direction::Out,
            30,
            &[(35, "D"), (34, "4"), (11, "o3")],
        );
        feed(
            &mut tr,
            Direction::In,
            31,
            &[(35, "j"), (34, "6"), (379, "o3")],
        );
        let now = t0 + Duration::from_millis(2031);
        let s = sessions_json(&tr, &Targets::default(), &[], (&[], &[]), "log", now);
        let r = row(&s[0]);
        assert_eq!(
            r,
            [
                "GW->VEN",
                "venue-a",
                "logged on",
                "30s",
                "2.0s",
                "6",
                "4",
                "1",
                "1",
                "3.0ms",
                "5.0ms",
                "-"
            ]
        );

        // Logged out by the venue with a reason.
        feed(
            &mut tr,
            Direction::In,
            40,
            &[(35, "5"), (34, "7"), (58, "maintenance")],
        );
        feed(&mut tr, Direction::Out, 41, &[(35, "5"), (34, "5")]);
        let state = FixState {
            enabled: true,
            logs: vec!["/x/*.log".into()],
            sessions: sessions_json(&tr, &Targets::default(), &[], (&[], &[]), "log", now),
            ..FixState::default()
        };
        let l = lines(Some(&state), 10);
        assert_eq!(l[0], "FIX SESSIONS (1, 0 logged on; from the log)");
        assert!(l[1].starts_with("SESSION  TARGET   STATE"), "{l:?}");
        assert!(
            l[2].contains("logged out") && l[2].ends_with("maintenance"),
            "{l:?}"
        );
    }

    #[test]
    fn off_means_no_panel_and_many_sessions_are_cut() {
        assert!(lines(None, 5).is_empty());
        assert!(lines(Some(&FixState::default()), 5).is_empty());
        let on = FixState {
            enabled: true,
            capture: true,
            ..FixState::default()
        };
        assert_eq!(
            lines(Some(&on), 5)[2],
            "(no FIX message seen yet)",
            "an empty panel says so"
        );
        assert_eq!(seconds(0.000_85), "850µs");
        assert_eq!(seconds(0.0123), "12.3ms");
        assert_eq!(seconds(1.25), "1.25s");
    }
}
