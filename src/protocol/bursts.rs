//! Bursts: the most messages a session sent (or received) in any window of 1 ms, 10 ms,
//! 100 ms and 1 s, over the last minute. A one-second rate hides bursts ten times higher, and
//! a venue's throttle counts messages in its own window, so the peak in each window is what
//! the throttle sees.
//!
//! Each direction keeps the times of its messages of the last second (the largest window) and,
//! per window, where that window starts among them: every message moves each start forward, so
//! the count of messages in the window ending at it costs O(1) amortized. The peak of each
//! window is kept per second of the last [`SLOTS`] seconds, and reported as their maximum: a
//! reader that looks at least once a minute sees every peak (a peak is a maximum: seeing it
//! twice is harmless), whichever reader and however often it reads.

use std::collections::VecDeque;
use std::time::SystemTime;

/// The windows' names, as the `window` attribute says them.
pub const WINDOW_NAMES: [&str; 4] = ["1ms", "10ms", "100ms", "1s"];

/// Seconds of peaks kept: the peak reported is the highest of the last minute.
pub const SLOTS: usize = 60;

/// Most runs of one time kept (the last second's): beyond it the oldest are let go, so a count
/// in the 1 s window misses the oldest (a million distinct times a second on one session).
pub const MAX_TIMES: usize = 1 << 20;

/// The windows in nanoseconds, smallest first.
const WINDOW_NS: [u64; 4] = [1_000_000, 10_000_000, 100_000_000, 1_000_000_000];

/// One direction's bursts.
#[derive(Debug, Clone)]
pub struct Bursts {
    /// The last second's messages as runs of one time (nanoseconds since the epoch) and how
    /// many messages had it, oldest first: a batch read at one instant is one entry.
    runs: VecDeque<(u64, u64)>,
    /// Messages in `runs`.
    total: u64,
    /// Per window: how many runs (from the front) are older than the window ending at the last
    /// message, and how many messages they hold.
    before: [(usize, u64); 4],
    /// Per second slot: (the second since the epoch, the peak of each window in it).
    slots: VecDeque<(u64, [u64; 4])>,
}

impl Default for Bursts {
    fn default() -> Self {
        Bursts {
            runs: VecDeque::new(),
            total: 0,
            before: [(0, 0); 4],
            slots: VecDeque::with_capacity(SLOTS),
        }
    }
}

fn nanos_of(t: SystemTime) -> u64 {
    let d = t.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
    d.as_secs() * 1_000_000_000 + u64::from(d.subsec_nanos())
}

fn second_of(t: SystemTime) -> u64 {
    nanos_of(t) / 1_000_000_000
}

impl Bursts {
    /// One message at `at`. Times that go back (a log's lines out of order) count as `at` =
    /// the last time, so a window never holds a message twice nor loses one.
    pub fn message(&mut self, at: SystemTime) {
        let at = nanos_of(at);
        match self.runs.back_mut() {
            Some((last, n)) if at <= *last => *n += 1,
            _ => {
                self.runs.push_back((at, 1));
                if self.runs.len() > MAX_TIMES {
                    // The oldest run goes; windows that still counted it forget it.
                    let (_, n) = self.runs.pop_front().unwrap_or_default();
                    self.total -= n;
                    for (runs, msgs) in &mut self.before {
                        if *runs > 0 {
                            *runs -= 1;
                            *msgs -= n;
                        }
                    }
                }
            }
        }
        self.total += 1;
        let at = self.runs.back().map_or(at, |r| r.0);
        let mut counts = [0u64; 4];
        for (i, w) in WINDOW_NS.iter().enumerate() {
            // A message exactly `w` before `at` is outside the window (at - w, at].
            let (runs, msgs) = &mut self.before[i];
            while *runs < self.runs.len() && at - self.runs[*runs].0 >= *w {
                *msgs += self.runs[*runs].1;
                *runs += 1;
            }
            counts[i] = self.total - *msgs;
        }
        // What the largest window no longer needs goes.
        let (gone, gone_msgs) = self.before[3];
        if gone > 0 {
            self.runs.drain(..gone);
            self.total -= gone_msgs;
            for (runs, msgs) in &mut self.before {
                *runs -= gone;
                *msgs -= gone_msgs;
            }
        }
        let sec = at / 1_000_000_000;
        match self.slots.back_mut() {
            Some((s, peaks)) if *s == sec => {
                for (p, c) in peaks.iter_mut().zip(counts) {
                    *p = (*p).max(c);
                }
            }
            _ => {
                if self.slots.len() == SLOTS {
                    self.slots.pop_front();
                }
                self.slots.push_back((sec, counts));
            }
        }
    }

    /// The peak of each window over the [`SLOTS`] seconds up to `now` (0 where no message
    /// came).
    pub fn peaks(&self, now: SystemTime) -> [u64; 4] {
        let from = second_of(now).saturating_sub(SLOTS as u64 - 1);
        let mut out = [0u64; 4];
        for (_, peaks) in self.slots.iter().filter(|(s, _)| *s >= from) {
            for (o, p) in out.iter_mut().zip(peaks) {
                *o = (*o).max(*p);
            }
        }
        out
    }
}

/// Whether a reject says the venue throttled us: a BusinessMessageReject (35=j) with
/// BusinessRejectReason (380) 8 (throttle limit exceeded), 9 (throttle limit exceeded, session
/// will be disconnected) or 10 (throttled messages rejected on request); or a Reject (3),
/// BusinessMessageReject (j), rejected ExecutionReport (8 with ExecType 8) or OrderCancelReject
/// (9) whose Text (58) speaks of a throttle.
pub fn is_throttle_reject(msg: &crate::codec::Message) -> bool {
    use crate::codec::tag;
    let mt = msg.msg_type();
    let reason_says = mt == b"j"
        && matches!(
            msg.get(tag::BUSINESS_REJECT_REASON),
            Some(b"8" | b"9" | b"10")
        );
    let rejects = match mt {
        b"3" | b"j" | b"9" => true,
        b"8" => msg.get(tag::EXEC_TYPE) == Some(b"8"),
        _ => false,
    };
    let text_says = rejects
        && msg
            .get_str(tag::TEXT)
            .is_some_and(|t| t.to_ascii_lowercase().contains("throttl"));
    reason_says || text_says
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn at(us: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000) + Duration::from_micros(us)
    }

    #[test]
    fn a_burst_of_known_size_and_spacing_gives_exact_peaks() {
        let mut b = Bursts::default();
        // 20 messages 100 µs apart (2 ms in all): 10 in any 1 ms, 20 in 10 ms.
        for i in 0..20 {
            b.message(at(i * 100));
        }
        // Then one message every 50 ms for a second: the 100 ms window holds at most 20 + 1.
        for i in 1..=20 {
            b.message(at(2_000 + i * 50_000));
        }
        let p = b.peaks(at(2_000_000));
        assert_eq!(p, [10, 20, 21, 39]);
        // The window is (t - w, t]: a message exactly 1 ms before another is not with it.
        let mut b = Bursts::default();
        b.message(at(0));
        b.message(at(1_000));
        assert_eq!(b.peaks(at(1_000))[0], 1);
        b.message(at(1_999));
        assert_eq!(b.peaks(at(1_999))[0], 2);
    }

    #[test]
    fn a_batch_at_one_instant_is_one_run_and_counts_whole() {
        let mut b = Bursts::default();
        for _ in 0..1000 {
            b.message(at(5));
        }
        assert_eq!(b.runs.len(), 1);
        assert_eq!(b.peaks(at(5)), [1000; 4]);
        // 2 ms later one more: the 1 ms window holds it alone, the 10 ms one all.
        b.message(at(2_005));
        assert_eq!(b.runs.len(), 2);
        let p = b.peaks(at(2_005));
        assert_eq!(p, [1000, 1001, 1001, 1001]);
    }

    #[test]
    fn peaks_are_kept_a_minute_then_forgotten() {
        let mut b = Bursts::default();
        for i in 0..5 {
            b.message(at(i));
        }
        assert_eq!(b.peaks(at(0))[0], 5);
        let later = Duration::from_secs(SLOTS as u64 - 1);
        assert_eq!(b.peaks(at(0) + later)[0], 5);
        assert_eq!(b.peaks(at(0) + later + Duration::from_secs(1))[0], 0);
        // A later quiet message starts a new second; the old peak still counts within the minute.
        b.message(at(3_000_000));
        assert_eq!(b.peaks(at(3_000_000)), [5, 5, 5, 5]);
        // Times going back count as the last one.
        b.message(at(2_000_000));
        assert_eq!(b.peaks(at(3_000_000))[0], 5);
    }

    #[test]
    fn throttle_rejects_by_reason_or_words() {
        use crate::codec::{parse, write, SOH};
        let m = |fields: &[(u32, &[u8])]| parse(&write("FIX.4.4", fields, SOH), SOH).unwrap();
        assert!(is_throttle_reject(&m(&[(35, b"j"), (380, b"8")])));
        assert!(is_throttle_reject(&m(&[(35, b"j"), (380, b"10")])));
        assert!(!is_throttle_reject(&m(&[(35, b"j"), (380, b"4")])));
        let text: &[u8] = b"Order rejected: throttle limit";
        assert!(is_throttle_reject(&m(&[
            (35, b"8"),
            (150, b"8"),
            (58, text)
        ])));
        assert!(!is_throttle_reject(&m(&[
            (35, b"8"),
            (150, b"0"),
            (58, text)
        ])));
        assert!(is_throttle_reject(&m(&[(35, b"3"), (58, b"Throttled")])));
        assert!(!is_throttle_reject(&m(&[(35, b"0"), (58, b"throttle")])));
    }
}
