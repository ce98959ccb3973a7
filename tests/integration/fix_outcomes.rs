//! Sequence forensics and order outcomes through the real binary, from an engine log the test
//! writes message by message (QuickFIX format, times it chooses): every sequence event kind,
//! a resend answered, ExecutionReports by ExecType (a FIX 4.4 Trade by OrdStatus), an order and
//! a cancel rejected with their reasons, and the first fill timed from the log's own clock.

use std::io::Write;
use std::time::{Duration, SystemTime};

use fix_monitor::fix::codec::{write, SOH};
use fix_monitor::fix::sim::utc_timestamp;

use crate::harness::{config_file, Sidecar};

/// Appends messages to a QuickFIX message log, numbering each side's messages itself.
struct Log {
    file: std::fs::File,
    seq: [u64; 2],
    t0: SystemTime,
    written: u64,
}

impl Log {
    /// The next message one way, `us` microseconds after t0.
    fn msg_at(&mut self, out: bool, mt: &str, us: u64, extra: &[(u32, &str)]) {
        self.write(out, mt, None, Duration::from_micros(us), extra);
    }

    /// `out`: we send it. `seq`: its MsgSeqNum, else the next one. `ms`: its time after t0.
    fn msg(&mut self, out: bool, mt: &str, seq: Option<u64>, ms: u64, extra: &[(u32, &str)]) {
        self.write(out, mt, seq, Duration::from_millis(ms), extra);
    }

    fn write(
        &mut self,
        out: bool,
        mt: &str,
        seq: Option<u64>,
        after: Duration,
        extra: &[(u32, &str)],
    ) {
        let (from, to) = if out {
            ("GW", "VENUE")
        } else {
            ("VENUE", "GW")
        };
        let i = usize::from(out);
        let n = seq.unwrap_or(self.seq[i]);
        self.seq[i] = self.seq[i].max(n + 1);
        let n = n.to_string();
        let mut fields: Vec<(u32, &[u8])> = vec![
            (35, mt.as_bytes()),
            (49, from.as_bytes()),
            (56, to.as_bytes()),
            (34, n.as_bytes()),
        ];
        fields.extend(extra.iter().map(|(t, v)| (*t, v.as_bytes())));
        let at = self.t0 + after;
        let mut line = format!("{} : ", utc_timestamp(at)).into_bytes();
        line.extend(write("FIX.4.4", &fields, SOH));
        line.push(b'\n');
        self.file.write_all(&line).unwrap();
        self.written += 1;
    }
}

#[test]
fn sequence_events_and_order_outcomes_are_classified_and_counted() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gw.messages.log");
    std::fs::write(&path, b"").unwrap();
    let cfg = config_file(&format!(
        "[[targets]]\nname = \"venue\"\naddress = \"127.0.0.1\"\nport = 1\n\
         comp_ids = [\"VENUE\"]\nmessage_limit = {{ count = 20, per = \"10ms\" }}\n\
         [poll]\ninterval = \"200ms\"\n\
         [fix]\nour_comp_ids = [\"GW\"]\n[[fix.logs]]\npath = \"{}\"\n",
        dir.path().join("*.messages.log").display()
    ));
    let sc = Sidecar::start(&["--config", cfg.path().to_str().unwrap()]);
    let file = path.display().to_string();
    sc.wait_for("the log followed", Duration::from_secs(10), |s| {
        s.json("/sessions")["log_files"][0] == file.as_str()
    });
    let file = std::fs::OpenOptions::new()
        .append(true)
        .open(&path)
        .unwrap();
    let mut log = Log {
        file,
        seq: [1, 1],
        t0: SystemTime::now(),
        written: 0,
    };
    // Logons resetting both ways.
    log.msg(true, "A", None, 0, &[(98, "0"), (108, "30"), (141, "Y")]);
    log.msg(false, "A", None, 1, &[(98, "0"), (108, "30"), (141, "Y")]);
    // An order: acknowledged, partly filled 250 ms after it was sent, then filled.
    log.msg(true, "D", None, 10, &[(11, "o1")]);
    log.msg(false, "8", None, 12, &[(11, "o1"), (150, "0"), (39, "0")]);
    log.msg(false, "8", None, 260, &[(11, "o1"), (150, "F"), (39, "1")]);
    log.msg(false, "8", None, 270, &[(11, "o1"), (150, "F"), (39, "2")]);
    // An order rejected (order exceeds limit), a cancel rejected (too late).
    log.msg(true, "D", None, 300, &[(11, "o2")]);
    log.msg(false, "8", None, 301, &[(11, "o2"), (150, "8"), (103, "3")]);
    log.msg(true, "F", None, 302, &[(11, "c1"), (41, "o1")]);
    log.msg(false, "9", None, 303, &[(11, "c1"), (102, "0")]);
    // They reset their numbers to 20, then gap-fill to 25.
    log.msg(false, "4", None, 400, &[(36, "20")]);
    log.msg(false, "4", Some(20), 401, &[(123, "Y"), (36, "25")]);
    // We ask for 5 onwards; they replay three messages as PossDup, one also PossResend.
    log.msg(true, "2", None, 500, &[(7, "5"), (16, "0")]);
    log.msg(false, "0", Some(5), 501, &[(43, "Y")]);
    log.msg(false, "0", Some(6), 502, &[(43, "Y")]);
    log.msg(false, "0", Some(7), 503, &[(43, "Y"), (97, "Y")]);
    // A number too low, not a PossDup.
    log.msg(false, "0", Some(3), 600, &[]);
    // A burst of 30 orders 100 µs apart (2.9 ms), then a reject saying we were throttled.
    for i in 0..30u64 {
        let id = format!("b{i}");
        log.msg_at(true, "D", 700_000 + i * 100, &[(11, &id)]);
    }
    log.msg(
        false,
        "j",
        Some(25),
        800,
        &[(380, "8"), (58, "Throttle limit exceeded")],
    );
    log.file.flush().unwrap();

    let series = |m: &crate::harness::Metrics, name: &str, l: &[(&str, &str)]| m.get(name, l);
    let written = log.written;
    sc.wait_for("every message read", Duration::from_secs(10), |s| {
        s.json("/sessions")["stats"]["logs"]["messages"].as_u64() == Some(written)
    });
    let m = sc.metrics();
    let venue = ("target", "venue");
    for (exec_type, n) in [
        ("new", 1.0),
        ("partial_fill", 1.0),
        ("fill", 1.0),
        ("rejected", 1.0),
    ] {
        let l = [venue, ("exec_type", exec_type)];
        assert_eq!(
            series(&m, "fix_execution_reports_total", &l),
            Some(n),
            "{exec_type}"
        );
    }
    assert_eq!(m.sum("fix_execution_reports_total", &[venue]), 4.0);
    let l = [venue, ("reason", "order_exceeds_limit")];
    assert_eq!(series(&m, "fix_order_rejects_total", &l), Some(1.0));
    let l = [venue, ("reason", "too_late_to_cancel")];
    assert_eq!(series(&m, "fix_cancel_rejects_total", &l), Some(1.0));
    // The first fill, 250 ms after the order by the log's clock; the full fill is not a first.
    let fills = [venue];
    assert_eq!(
        series(&m, "fix_order_fill_latency_seconds_count", &fills),
        Some(1.0)
    );
    let sum = series(&m, "fix_order_fill_latency_seconds_sum", &fills).unwrap();
    assert!((sum - 0.25).abs() < 1e-6, "{sum}");
    let seq = |dir: &str, kind: &str| {
        let l = [
            venue,
            ("session", "GW->VENUE"),
            ("direction", dir),
            ("kind", kind),
        ];
        series(&m, "fix_session_sequence_events_total", &l)
    };
    for (dir, kind, n) in [
        ("out", "reset_at_logon", 1.0),
        ("in", "reset_at_logon", 1.0),
        ("in", "reset", 1.0),
        ("in", "gap_fill", 1.0),
        ("in", "poss_dup", 3.0),
        ("in", "poss_resend", 1.0),
        ("in", "too_low", 1.0),
        ("in", "resend_storm", 0.0),
        ("out", "too_low", 0.0),
    ] {
        assert_eq!(seq(dir, kind), Some(n), "{dir} {kind}");
    }
    // Bursts: exact peaks per window, the throttle's utilization, the reject.
    let peak = |dir: &str, window: &str| {
        let l = [
            venue,
            ("session", "GW->VENUE"),
            ("direction", dir),
            ("window", window),
        ];
        series(&m, "fix_session_peak_messages", &l)
    };
    let out: Vec<_> = ["1ms", "10ms", "100ms", "1s"]
        .map(|w| peak("out", w))
        .into();
    assert_eq!(out, [Some(10.0), Some(30.0), Some(30.0), Some(35.0)]);
    let l = [venue, ("session", "GW->VENUE")];
    assert_eq!(
        series(&m, "fix_session_throttle_utilization_ratio", &l),
        Some(1.5)
    );
    assert_eq!(
        series(&m, "fix_session_throttle_rejects_total", &l),
        Some(1.0)
    );
    let j = sc.json("/sessions");
    let q = &j["sessions"][0]["sequence"];
    let resend = &q["resend_requests"][0];
    assert_eq!(resend["asked"], "out", "{q}");
    assert_eq!(
        (resend["begin"].as_u64(), resend["answered"].as_bool()),
        (Some(5), Some(true))
    );
    assert_eq!(resend["replayed"], 3, "{q}");
    let reset = (q["recent"].as_array().unwrap().iter())
        .find(|e| e["kind"] == "reset")
        .unwrap();
    assert_eq!(reset["other"], 20, "{q}");
    let low = (q["recent"].as_array().unwrap().iter())
        .find(|e| e["kind"] == "too_low")
        .unwrap();
    assert_eq!(
        (low["seq"].as_u64(), low["other"].as_u64()),
        (Some(3), Some(25))
    );
    let (status, log) = sc.terminate();
    assert!(status.success(), "{log}");
}
