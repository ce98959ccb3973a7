//! One direction of a TCP connection put back in order, from segments as a packet socket sees
//! them: retransmitted (dropped), overlapping (trimmed), out of order (held until the hole
//! fills) or lost (a gap: after a while, or when too much is held, the stream jumps over the
//! hole and says how many bytes it lost; the FIX decoder then resynchronises at the next
//! `8=FIX`).
//!
//! Pure: segments and times in, in-order bytes and gaps out. Sequence numbers wrap (RFC 9293
//! arithmetic modulo 2^32): every comparison is an offset from the next expected byte.

use std::borrow::Cow;
use std::time::{Duration, SystemTime};

/// What comes out of a stream, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Chunk<'a> {
    /// Bytes in order, next after the previous chunk: the pushed segment's own bytes when it
    /// came in order (no copy), else bytes the stream held.
    Data(Cow<'a, [u8]>),
    /// This many bytes were never seen.
    Gap(u64),
}

/// Counts for one stream.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct StreamStats {
    /// Payload bytes delivered in order.
    pub bytes: u64,
    /// Segments wholly seen before (retransmissions, or loopback's second copy).
    pub retransmitted_segments: u64,
    /// Bytes of segments that overlapped what was already delivered.
    pub overlap_bytes: u64,
    /// Segments that came beyond a hole (held until it fills or becomes a gap).
    pub out_of_order_segments: u64,
    /// Holes jumped over ([`Chunk::Gap`]).
    pub gaps: u64,
    /// Bytes lost in those holes.
    pub gap_bytes: u64,
}

/// Bounds on what a stream holds while waiting for a hole to fill.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Payload bytes held beyond a hole at most; beyond it the hole is a gap.
    pub max_held_bytes: usize,
    /// A hole not filled for this long is a gap.
    pub hold: Duration,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            max_held_bytes: 1 << 20,
            hold: Duration::from_millis(500),
        }
    }
}

/// One TCP direction.
#[derive(Debug, Default)]
pub struct Stream {
    limits: Limits,
    /// The next byte expected; `None` before the first segment.
    next: Option<u32>,
    /// Segments beyond a hole: (seq, bytes, when first held).
    held: Vec<(u32, Vec<u8>, SystemTime)>,
    held_bytes: usize,
    /// What the stream has seen so far.
    pub stats: StreamStats,
}

fn offset(seq: u32, from: u32) -> i64 {
    i64::from(seq.wrapping_sub(from) as i32)
}

impl Stream {
    /// An empty stream; its first segment sets the next expected sequence number.
    pub fn new(limits: Limits) -> Stream {
        Stream {
            limits,
            ..Stream::default()
        }
    }

    /// One segment: its sequence number, whether it is a SYN (which takes one number), its
    /// payload, and when it was seen.
    pub fn push<'a>(
        &mut self,
        seq: u32,
        syn: bool,
        payload: &'a [u8],
        at: SystemTime,
        out: &mut Vec<Chunk<'a>>,
    ) {
        let seq = if syn { seq.wrapping_add(1) } else { seq };
        let next = *self.next.get_or_insert(seq);
        if payload.is_empty() {
            return;
        }
        let off = offset(seq, next);
        let end = off + payload.len() as i64;
        if end <= 0 {
            self.stats.retransmitted_segments += 1;
            return;
        }
        if off > 0 {
            self.stats.out_of_order_segments += 1;
            if !self
                .held
                .iter()
                .any(|(s, b, _)| *s == seq && b.len() >= payload.len())
            {
                self.held_bytes += payload.len();
                self.held.push((seq, payload.to_vec(), at));
            }
            if self.held_bytes > self.limits.max_held_bytes {
                self.skip_hole(out);
            }
            return;
        }
        let trim = (-off) as usize;
        self.stats.overlap_bytes += trim as u64;
        self.deliver(Cow::Borrowed(&payload[trim..]), out);
        self.drain_held(out);
    }

    /// Declare a gap for a hole older than the hold time, at `now`.
    pub fn tick(&mut self, now: SystemTime, out: &mut Vec<Chunk<'_>>) {
        let oldest = self.held.iter().map(|(_, _, t)| *t).min();
        if let Some(t) = oldest {
            if now.duration_since(t).unwrap_or_default() >= self.limits.hold {
                self.skip_hole(out);
            }
        }
    }

    /// Bytes held beyond a hole.
    pub fn held_bytes(&self) -> usize {
        self.held_bytes
    }

    fn deliver<'a>(&mut self, bytes: Cow<'a, [u8]>, out: &mut Vec<Chunk<'a>>) {
        if bytes.is_empty() {
            return;
        }
        self.stats.bytes += bytes.len() as u64;
        let next = self.next.expect("set by push");
        self.next = Some(next.wrapping_add(bytes.len() as u32));
        match out.last_mut() {
            Some(Chunk::Data(d)) => d.to_mut().extend_from_slice(&bytes),
            _ => out.push(Chunk::Data(bytes)),
        }
    }

    /// Deliver held segments that now start at or before the next byte.
    fn drain_held(&mut self, out: &mut Vec<Chunk<'_>>) {
        loop {
            let Some(next) = self.next else { return };
            let Some(i) = self.held.iter().position(|(s, _, _)| offset(*s, next) <= 0) else {
                return;
            };
            let (seq, mut bytes, _) = self.held.swap_remove(i);
            self.held_bytes -= bytes.len();
            let off = offset(seq, next);
            let end = off + bytes.len() as i64;
            if end <= 0 {
                self.stats.retransmitted_segments += 1;
                continue;
            }
            let trim = (-off) as usize;
            self.stats.overlap_bytes += trim as u64;
            bytes.drain(..trim);
            self.deliver(Cow::Owned(bytes), out);
        }
    }

    /// Jump over the hole to the first held segment.
    fn skip_hole(&mut self, out: &mut Vec<Chunk<'_>>) {
        let Some(next) = self.next else { return };
        let Some(first) = self.held.iter().map(|(s, _, _)| offset(*s, next)).min() else {
            return;
        };
        if first > 0 {
            self.stats.gaps += 1;
            self.stats.gap_bytes += first as u64;
            out.push(Chunk::Gap(first as u64));
            self.next = Some(next.wrapping_add(first as u32));
        }
        self.drain_held(out);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn t(ms: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_millis(ms)
    }

    fn data(out: &[Chunk]) -> Vec<u8> {
        out.iter()
            .flat_map(|c| match c {
                Chunk::Data(d) => d.to_vec(),
                Chunk::Gap(_) => vec![],
            })
            .collect()
    }

    #[test]
    fn in_order_retransmit_overlap_and_reorder() {
        let mut s = Stream::new(Limits::default());
        let mut out = vec![];
        let base = u32::MAX - 5; // wraps inside the test
        s.push(base, true, b"", t(0), &mut out);
        s.push(base.wrapping_add(1), false, b"hello ", t(1), &mut out);
        s.push(base.wrapping_add(1), false, b"hello ", t(2), &mut out); // retransmit
        s.push(base.wrapping_add(12), false, b"!!", t(3), &mut out); // ahead
        s.push(base.wrapping_add(4), false, b"lo world", t(4), &mut out); // overlap, fills
        assert_eq!(data(&out), b"hello world!!");
        assert_eq!(s.stats.retransmitted_segments, 1);
        assert_eq!(s.stats.overlap_bytes, 3);
        assert_eq!(s.stats.out_of_order_segments, 1);
        assert_eq!(s.stats.gaps, 0);
        assert_eq!(s.held_bytes(), 0);
    }

    #[test]
    fn a_lost_segment_is_a_gap_after_the_hold_time() {
        let mut s = Stream::new(Limits::default());
        let mut out = vec![];
        s.push(100, false, b"abc", t(0), &mut out);
        s.push(110, false, b"xyz", t(10), &mut out); // 7 bytes lost
        s.tick(t(509), &mut out);
        assert_eq!(out, [Chunk::Data(b"abc".to_vec().into())]);
        s.tick(t(510), &mut out);
        assert_eq!(
            out,
            [
                Chunk::Data(b"abc".to_vec().into()),
                Chunk::Gap(7),
                Chunk::Data(b"xyz".to_vec().into())
            ]
        );
        assert_eq!((s.stats.gaps, s.stats.gap_bytes), (1, 7));
    }

    #[test]
    fn too_much_held_is_a_gap_at_once() {
        let mut s = Stream::new(Limits {
            max_held_bytes: 10,
            hold: Duration::from_secs(60),
        });
        let mut out = vec![];
        s.push(0, false, b"a", t(0), &mut out);
        s.push(5, false, b"123456", t(0), &mut out);
        s.push(11, false, b"789abc", t(0), &mut out);
        assert_eq!(data(&out), b"a123456789abc");
        assert_eq!(s.stats.gap_bytes, 4);
    }

    proptest! {
        /// Any segmentation, duplicated and shuffled, reads back the stream exactly.
        #[test]
        fn any_order_reads_back(len in 1usize..300, cuts in proptest::collection::vec(1usize..40, 1..30),
                                dups in proptest::collection::vec(any::<bool>(), 30), seed in any::<u64>(), isn in any::<u32>()) {
            let stream: Vec<u8> = (0..len).map(|i| (i * 7) as u8).collect();
            let mut segs = vec![];
            let mut at = 0;
            let mut i = 0;
            while at < len {
                let n = cuts[i % cuts.len()].min(len - at);
                segs.push((at, n));
                if dups[i % dups.len()] { segs.push((at.saturating_sub(3), n + 3.min(at))); }
                at += n;
                i += 1;
            }
            // Shuffle all but the first (which sets where the stream starts).
            let mut rng = fastrand::Rng::with_seed(seed);
            rng.shuffle(&mut segs[1..]);
            let mut s = Stream::new(Limits::default());
            let mut out = vec![];
            s.push(isn, true, b"", t(0), &mut out);
            for (a, n) in segs {
                s.push(isn.wrapping_add(1).wrapping_add(a as u32), false, &stream[a..a + n], t(0), &mut out);
            }
            prop_assert_eq!(data(&out), stream);
            prop_assert_eq!(s.stats.gaps, 0);
            prop_assert_eq!(s.held_bytes(), 0);
        }
    }
}
