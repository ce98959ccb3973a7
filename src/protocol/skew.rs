//! Clock skew: a message's SendingTime (tag 52) against the time it was seen, their clock (or
//! our engine's) minus ours.
//!
//! Inbound, the time seen is the wire's kernel receive timestamp or the engine log's line
//! timestamp; the difference is the counterparty's clock offset less the one-way delay (the FIX
//! thread adds back half the link's smoothed RTT for wire samples, see `fix::monitor`).
//! Outbound, it is our engine's SendingTime against our kernel's send time: how long a message
//! waited inside our gateway after it was stamped (negative when it waited).
//!
//! Sampled, not measured on every message: the decode path must stay cheap, and a clock moves
//! slowly. Each session and direction takes at most one sample per [`SAMPLE_EVERY`] (the first
//! message at least that long after the last sample's, or one whose time went back by as
//! much): every other message costs one comparison of integers, and tag 52 is looked up (a
//! scan of the header's first fields, where engines put it) and parsed only on a sampled one.
//! A sampled message whose SendingTime is missing or malformed uses up its turn and is counted
//! ([`SkewSampler::unusable`]), so malformed input costs no more than good input.

use std::time::{Duration, SystemTime};

use crate::codec::{tag, Message};

/// At most one sample per session and direction per this period.
pub const SAMPLE_EVERY: Duration = Duration::from_millis(100);
const SAMPLE_EVERY_NS: u64 = SAMPLE_EVERY.as_nanos() as u64;

/// Nanoseconds since the epoch (0 before it).
pub fn nanos_of(t: SystemTime) -> u64 {
    let d = t.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
    d.as_secs() * 1_000_000_000 + u64::from(d.subsec_nanos())
}

/// A FIX UTCTimestamp (`YYYYMMDD-HH:MM:SS`, optionally `.` and 1 to 9 digits of fraction: s,
/// ms, µs or ns precision), as nanoseconds since the epoch; `None` for anything else (a
/// malformed value never panics). Parsed by chrono: at one parse per 100 ms per session and
/// direction its cost does not show, so a hand parser would buy nothing.
pub fn parse_utc_timestamp(v: &[u8]) -> Option<i64> {
    // chrono's `%Y` would take a sign or more than four digits, and `%.f` a bare `.`: hold the
    // shape to the FIX one before handing it over.
    let shape_ok = v.len() >= 17
        && v[..8].iter().all(u8::is_ascii_digit)
        && v[8] == b'-'
        && match v.len() {
            17 => true,
            19..=27 => v[17] == b'.' && v[18..].iter().all(u8::is_ascii_digit),
            _ => false,
        };
    if !shape_ok {
        return None;
    }
    let s = std::str::from_utf8(v).ok()?;
    let t = chrono::NaiveDateTime::parse_from_str(s, "%Y%m%d-%H:%M:%S%.f").ok()?;
    t.and_utc().timestamp_nanos_opt()
}

/// One direction's sampling of a session's skew.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct SkewSampler {
    /// When the last sample was taken (ns since the epoch); 0: never.
    #[serde(skip)]
    last_ns: u64,
    /// The last sample, nanoseconds (SendingTime minus the time seen), and when it was seen.
    pub last: Option<(i64, SystemTime)>,
    /// Samples taken.
    pub samples: u64,
    /// Sampled messages whose SendingTime was missing or not a UTCTimestamp.
    pub unusable: u64,
}

impl SkewSampler {
    /// A message seen at `at`: its skew in nanoseconds when it is sampled (see the module doc),
    /// else `None`.
    pub fn offer(&mut self, msg: &Message, at: SystemTime) -> Option<i64> {
        let at_ns = nanos_of(at);
        if self.last_ns != 0 && at_ns.abs_diff(self.last_ns) < SAMPLE_EVERY_NS {
            return None;
        }
        self.last_ns = at_ns;
        let Some(sent) = msg.get(tag::SENDING_TIME).and_then(parse_utc_timestamp) else {
            self.unusable += 1;
            return None;
        };
        let skew = sent.saturating_sub(i64::try_from(at_ns).ok()?);
        self.samples += 1;
        self.last = Some((skew, at));
        Some(skew)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::{parse, write, SOH};

    /// 2026-11-30 12:00:00 UTC, seconds since the epoch.
    const NOON: i64 = 1_796_040_000;

    #[test]
    fn utc_timestamps_of_every_precision() {
        let ns = |s: &str| parse_utc_timestamp(s.as_bytes());
        let noon = NOON * 1_000_000_000;
        assert_eq!(ns("20261130-12:00:00"), Some(noon));
        assert_eq!(ns("20261130-12:00:00.250"), Some(noon + 250_000_000));
        assert_eq!(ns("20261130-12:00:00.000123"), Some(noon + 123_000));
        assert_eq!(ns("20261130-12:00:00.123456789"), Some(noon + 123_456_789));
        assert_eq!(ns("20261130-11:59:59.9"), Some(noon - 100_000_000));
        assert_eq!(ns("19700101-00:00:00"), Some(0));
    }

    #[test]
    fn malformed_timestamps_are_refused() {
        for bad in [
            "",
            "20261130",
            "20261130-12:00",
            "20261130-12:00:00.",
            "20261130-12:00:00.1234567890",
            "20261130 12:00:00",
            "+2026113-12:00:00",
            "20261130-25:00:00",
            "20261332-12:00:00",
            "20261130-12:00:00Z",
            "2026113x-12:00:00",
            "20261130-12:00:00.12a",
            "20261130-1:00:000",
        ] {
            assert_eq!(parse_utc_timestamp(bad.as_bytes()), None, "{bad:?}");
        }
        assert_eq!(parse_utc_timestamp(b"20261130-12:00:00.\xff\xfe"), None);
    }

    fn msg(sending_time: Option<&str>) -> Message {
        let mut f: Vec<(u32, &[u8])> = vec![(35, b"0"), (49, b"V"), (56, b"GW"), (34, b"1")];
        if let Some(t) = sending_time {
            f.push((52, t.as_bytes()));
        }
        parse(&write("FIX.4.4", &f, SOH), SOH).unwrap()
    }

    fn at(ns: i64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_nanos(ns as u64)
    }

    #[test]
    fn one_sample_per_period_with_the_exact_difference() {
        let noon = NOON * 1_000_000_000;
        let mut s = SkewSampler::default();
        // Their clock 250 ms ahead: sent at our 12:00:00.000, stamped .250, seen 40 µs later.
        let m = msg(Some("20261130-12:00:00.250"));
        assert_eq!(s.offer(&m, at(noon + 40_000)), Some(250_000_000 - 40_000));
        // Within 100 ms of the sample: not sampled, not parsed.
        assert_eq!(s.offer(&m, at(noon + 40_000 + 99_999_999)), None);
        assert_eq!(s.offer(&msg(Some("junk")), at(noon + 50_000_000)), None);
        assert_eq!((s.samples, s.unusable), (1, 0));
        // 100 ms after: sampled. Behind now: stamped 12:00:00.100, seen at .140 04.
        let m = msg(Some("20261130-12:00:00.100000"));
        let seen = noon + 40_000 + 100_000_000;
        assert_eq!(s.offer(&m, at(seen)), Some(-40_000));
        assert_eq!(s.last, Some((-40_000, at(seen))));
        // A time that went back by a period or more (a log read out of order) is sampled.
        assert_eq!(s.offer(&m, at(noon)), Some(100_000_000));
        assert_eq!(s.samples, 3);
    }

    #[test]
    fn a_missing_or_malformed_sending_time_uses_its_turn() {
        let noon = NOON * 1_000_000_000;
        let mut s = SkewSampler::default();
        assert_eq!(s.offer(&msg(None), at(noon)), None);
        assert_eq!(s.offer(&msg(Some("20261130-12:00:00")), at(noon + 1)), None);
        assert_eq!(
            s.offer(&msg(Some("2026-11-30")), at(noon + 100_000_000)),
            None
        );
        assert_eq!((s.samples, s.unusable, s.last), (0, 2, None));
        let m = msg(Some("20261130-12:00:00.2"));
        assert_eq!(s.offer(&m, at(noon + 200_000_000)), Some(0));
        assert_eq!((s.samples, s.unusable), (1, 2));
    }
}
